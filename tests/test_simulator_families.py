"""Simulator rules for transformer/NPU op families (docs/simulator.md, "Op families"): where each family is
quantized, checked on tiny graphs built here against a numpy reference written here."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qdebug.graph.fusion import build_quant_ops
from qdebug.graph.hazards import find_hazards, mask_add, norm_inputs, norm_outliers, softmax_range
from qdebug.graph.model import ModelGraph
from qdebug.quant.profiles import Profile, get_profile
from qdebug.quant.scheme import QuantConfig, QuantScheme
from qdebug.quant.simulate import build_quantized, plan

F = TensorProto.FLOAT


# ------------------------------------------------------------------ helpers written for the test
def _graph(nodes, inits, inputs, outputs, opset=17) -> ModelGraph:
    g = helper.make_graph(nodes, "t", inputs, outputs,
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return ModelGraph(m, "t.onnx")


def _vi(name, shape, t=F):
    return helper.make_tensor_value_info(name, t, list(shape))


def _float_values(g: ModelGraph, feeds: dict) -> dict[str, np.ndarray]:
    """Every tensor of the float model (onnxruntime), to calibrate ranges exactly as a float pass would."""
    names = [o for n in g.nodes for o in n.output if o]
    sess = ort.InferenceSession(g.with_outputs(names).SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    vals = dict(zip(outs, sess.run(outs, feeds), strict=True))
    vals.update(feeds)
    return vals


def _ranges(vals: dict) -> dict[str, tuple[float, float]]:
    return {k: (float(v.min()), float(v.max())) for k, v in vals.items()
            if np.issubdtype(np.asarray(v).dtype, np.floating) and np.size(v)}


def _simulate(g, feeds, profile="generic", cfg=None, outputs=None):
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    cfg = cfg or QuantConfig()
    ops = build_quant_ops(g, fuse=prof.fuse)
    vals = _float_values(g, feeds)
    sp = plan(g, ops, prof, cfg, _ranges(vals))
    model = build_quantized(g, ops, sp, prof, outputs)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, feeds), strict=True))
    return ops, sp, model, vals, out


def _qpoints(model: onnx.ModelProto) -> set[str]:
    """Tensors the rewritten graph quantize-dequantizes (the output of each fake-quant's final Mul)."""
    return {n.output[0] for n in model.graph.node if n.name.endswith("/dq")}


def _asym(lo: float, hi: float, bits: int = 8) -> tuple[float, int, int, int]:
    """(scale, zero point, qmin, qmax) of an asymmetric signed range holding 0, written out by hand."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = (hi - lo) / (qmax - qmin) or 1.0
    zp = int(np.clip(round(qmin - lo / s), qmin, qmax))
    return s, zp, qmin, qmax


def _fq(x, s, zp, qmin, qmax):
    """y = clip(round(x / s), qmin - zp, qmax - zp) * s (the documented fake-quant formula)."""
    return (np.clip(np.round(np.asarray(x, np.float64) / s), qmin - zp, qmax - zp) * s).astype(np.float32)


def _fq_act(x, vals, name, bits=8):
    return _fq(x, *_asym(float(vals[name].min()), float(vals[name].max()), bits))


def _fq_weight(w, axis=None, bits=8):
    """Symmetric weight fake-quant: per tensor (axis None) or per slice along `axis`; q in [-127, 127]."""
    qmax = 2 ** (bits - 1) - 1
    if axis is None:
        s = np.abs(w).max() / qmax
    else:
        red = tuple(i for i in range(w.ndim) if i != axis)
        s = np.abs(w).max(axis=red, keepdims=True) / qmax
    s = np.where(s > 0, s, 1.0)
    return (np.clip(np.round(w / s), -qmax, qmax) * s).astype(np.float32)


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _close(out, ref, step):
    """Equal up to float summation order: everything within one output step, nearly all exactly."""
    np.testing.assert_allclose(out, ref, atol=step * 1.01 + 1e-6)
    assert np.mean(np.isclose(out, ref, atol=1e-5)) > 0.9


def _op(ops, key):
    return next(o for o in ops if o.key == key)


# ------------------------------------------------------------------ attention: MatMul, Softmax
def _attention(rng):
    d = 8
    wq, wk, wv = (rng.normal(size=(d, d)).astype(np.float32) for _ in range(3))
    wq[:, 0] *= 20  # one output column much larger: per-column scales differ from per-row ones
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="mq"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="mk"),
             helper.make_node("MatMul", ["x", "wv"], ["v"], name="mv"),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="tk"),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="qk"),
             helper.make_node("Div", ["s", "sqrtd"], ["s2"], name="scale"),
             helper.make_node("Softmax", ["s2"], ["p"], axis=-1, name="sm"),
             helper.make_node("MatMul", ["p", "v"], ["y"], name="pv")]
    inits = {"wq": wq, "wk": wk, "wv": wv, "sqrtd": np.array(math.sqrt(d), np.float32)}
    g = _graph(nodes, inits, [_vi("x", (1, 4, d))], [_vi("y", (1, 4, d))])
    return g, wq, wk, wv


def test_attention_matmuls_and_softmax_points_and_values():
    rng = np.random.default_rng(0)
    g, wq, wk, wv = _attention(rng)
    x = rng.normal(size=(1, 4, 8)).astype(np.float32)
    ops, sp, model, vals, out = _simulate(g, {"x": x}, outputs=["y", "p"])
    # Q.K^T with its constant scale is ONE op (scale folded); the K transpose is a passthrough
    assert _op(ops, "qk").nodes == ["qk", "scale"] and _op(ops, "qk").weighted == []
    assert _op(ops, "tk").kind == "passthrough"
    assert _qpoints(model) == {"x::q", "q", "k", "v", "s2", "p", "y"}
    # constant weights: per output column of B ([K, N] -> axis 1), not per row
    np.testing.assert_allclose(sp.weights["mq"], _fq_weight(wq, axis=1), rtol=0, atol=1e-6)
    assert not np.allclose(sp.weights["mq"], _fq_weight(wq, axis=0), atol=1e-3)
    # Softmax output on the fixed grid k/256, k in [0, 255] (zero at qmin = -128)
    assert sp.act["p"].scale[0] == 1 / 256 and sp.act["p"].zero_point[0] == -128
    # numpy reference: fake-quant at the documented points, float math between them
    xq = _fq_act(x, vals, "x")
    q = _fq_act(xq @ _fq_weight(wq, 1), vals, "q")
    k = _fq_act(xq @ _fq_weight(wk, 1), vals, "k")
    v = _fq_act(xq @ _fq_weight(wv, 1), vals, "v")
    s2 = _fq_act(q @ k.transpose(0, 2, 1) / math.sqrt(8), vals, "s2")
    p = _fq(_softmax(s2), 1 / 256, -128, -128, 127)
    y = _fq_act(p @ v, vals, "y")
    _close(out["p"], p, 1 / 256)
    _close(out["y"], y, _asym(float(vals["y"].min()), float(vals["y"].max()))[0])
    steps = out["p"] * 256
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)


def test_gemm_weight_axis_follows_transB_and_bias_add_fuses():
    rng = np.random.default_rng(10)
    for trans_b, shape, axis in ((1, (6, 4), 0), (0, (4, 6), 1)):  # output features N = 6 either way
        w = rng.normal(size=shape).astype(np.float32)
        w[(0, slice(None)) if axis == 0 else (slice(None), 0)] *= 30  # one output feature far larger
        nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], transB=trans_b, name="fc")]
        g = _graph(nodes, {"w": w}, [_vi("x", (2, 4))], [_vi("y", (2, 6))])
        _, sp, _, _, _ = _simulate(g, {"x": rng.normal(size=(2, 4)).astype(np.float32)})
        np.testing.assert_allclose(sp.weights["fc"], _fq_weight(w, axis=axis), atol=1e-6)
    # MatMul + Add(bias vector) is one op; an Add of a [S, S] constant (a causal mask) is not a bias
    for bias_shape, fused in (((6,), True), ((2, 6), False)):
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                 helper.make_node("Add", ["m", "b"], ["y"], name="add")]
        g = _graph(nodes, {"w": rng.normal(size=(4, 6)).astype(np.float32),
                           "b": rng.normal(size=bias_shape).astype(np.float32)},
                   [_vi("x", (2, 4))], [_vi("y", (2, 6))])
        assert (build_quant_ops(g)[1].nodes == ["mm", "add"]) is fused


def test_softmax_output_and_input_width_per_profile():
    rng = np.random.default_rng(1)
    g, *_ = _attention(rng)
    x = rng.normal(size=(1, 4, 8)).astype(np.float32)
    _, sp_r, _, vals, _ = _simulate(g, {"x": x}, profile="rknn")
    # rknn calibrates the Softmax output ([0, observed max]): 1/255-ish, not the fixed 1/256
    assert abs(sp_r.act["p"].scale[0] - float(vals["p"].max()) / 255) < 1e-9
    wide = Profile("wide", softmax_output="full", softmax_input_bits=16)
    ops, sp_w, model, vals, out = _simulate(g, {"x": x}, profile=wide, outputs=["p"])
    assert sp_w.act["s2"].qmax == 32767 and sp_w.act["q"].qmax == 127  # only the Softmax's feed widens
    assert sp_w.act["p"].scale[0] == 1 / 255 and sp_w.act["p"].qmax == 127
    xq = _fq_act(x, vals, "x")
    q = _fq_act(xq @ sp_w.weights["mq"], vals, "q")
    k = _fq_act(xq @ sp_w.weights["mk"], vals, "k")
    s2 = _fq_act(q @ k.transpose(0, 2, 1) / math.sqrt(8), vals, "s2", bits=16)
    _close(out["p"], _fq(_softmax(s2), 1 / 255, -128, -128, 127), 1 / 255)


# ------------------------------------------------------------------ LayerNorm / RMSNorm
def _ln_prefix():
    return [helper.make_node("Mul", ["x", "two"], ["h"], name="pre")]


def _ln_fused():
    nodes = _ln_prefix() + [
        helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], axis=-1, epsilon=1e-5, name="ln"),
        helper.make_node("Relu", ["n"], ["y"], name="post")]
    return nodes


def _ln_decomposed():
    return _ln_prefix() + [
        helper.make_node("ReduceMean", ["h"], ["mu"], axes=[-1], name="rm1"),
        helper.make_node("Sub", ["h", "mu"], ["d"], name="sub"),
        helper.make_node("Pow", ["d", "p2"], ["d2"], name="pow"),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1], name="rm2"),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="addeps"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
        helper.make_node("Div", ["d", "sd"], ["nn"], name="div"),
        helper.make_node("Mul", ["nn", "gamma"], ["ng"], name="mulg"),
        helper.make_node("Add", ["ng", "beta"], ["n"], name="addb"),
        helper.make_node("Relu", ["n"], ["y"], name="post")]


def _ln_graph(nodes, rng):
    inits = {"two": np.array(2.0, np.float32), "gamma": rng.uniform(0.5, 1.5, 6).astype(np.float32),
             "beta": rng.normal(size=6).astype(np.float32), "p2": np.array(2.0, np.float32),
             "eps": np.array(1e-5, np.float32)}
    return _graph(nodes, inits, [_vi("x", (1, 3, 6))], [_vi("y", (1, 3, 6))], opset=17), inits


def test_layernorm_fused_and_decomposed_are_one_unit_with_same_points():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 3, 6)).astype(np.float32)
    results = {}
    for form, nodes in (("fused", _ln_fused()), ("decomposed", _ln_decomposed())):
        g, inits = _ln_graph(nodes, np.random.default_rng(3))
        ops, sp, model, vals, out = _simulate(g, {"x": x}, outputs=["y", "n"])
        unit = next(o for o in ops if o.family == "LayerNormalization")
        assert unit.kind == "compute" and [t for _, _, t in unit.inputs] == ["h"]
        assert unit.outputs == ["n"]
        results[form] = _qpoints(model)
        # reference: quantized at the LN input (its producer's output) and output only
        h = _fq_act(_fq_act(x, vals, "x") * 2, vals, "h")
        mu = h.mean(-1, keepdims=True)
        ln = (h - mu) / np.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * inits["gamma"] + inits["beta"]
        n = _fq_act(ln, vals, "n")
        _close(out["n"], n, _asym(float(vals["n"].min()), float(vals["n"].max()))[0])
    assert results["fused"] == results["decomposed"] == {"x::q", "h", "n", "y"}
    # input-side profile: ONE input point for the unit in both forms (x read twice, quantized once)
    for nodes in (_ln_fused(), _ln_decomposed()):
        g, _ = _ln_graph(nodes, np.random.default_rng(3))
        _, _, model, _, _ = _simulate(g, {"x": x}, profile="hisi")
        ins = {t for t in _qpoints(model) if "::in::" in t and t.startswith("h::")}
        assert len(ins) == 1
        # every LN member reads the quantized h: the only reader of the float h is the fake-quant itself
        readers = [n.name for n in model.graph.node if "h" in n.input]
        assert len(readers) == 1 and readers[0].startswith(next(iter(ins)) + "::qdq"), readers


def test_rmsnorm_decomposed_is_one_unit():
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"], name="sq"),
             helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], name="rm"),
             helper.make_node("Add", ["ms", "eps"], ["me"], name="addeps"),
             helper.make_node("Sqrt", ["me"], ["rs"], name="sqrt"),
             helper.make_node("Div", ["x", "rs"], ["nx"], name="div"),
             helper.make_node("Mul", ["nx", "gamma"], ["y"], name="mulg")]
    gamma = rng.uniform(0.5, 1.5, 5).astype(np.float32)
    g = _graph(nodes, {"eps": np.array(1e-6, np.float32), "gamma": gamma}, [_vi("x", (2, 5))], [_vi("y", (2, 5))])
    x = rng.normal(size=(2, 5)).astype(np.float32)
    ops, _, model, vals, out = _simulate(g, {"x": x})
    unit = _op(ops, "sq")
    assert unit.family == "RMSNormalization" and len(unit.nodes) == 6
    assert _qpoints(model) == {"x::q", "y"}
    xq = _fq_act(x, vals, "x")
    ref = _fq_act(xq / np.sqrt((xq * xq).mean(-1, keepdims=True) + 1e-6) * gamma, vals, "y")
    _close(out["y"], ref, _asym(float(vals["y"].min()), float(vals["y"].max()))[0])


# ------------------------------------------------------------------ GELU
def _gelu_erf_nodes():
    return [helper.make_node("Div", ["x", "sqrt2"], ["a"], name="div"),
            helper.make_node("Erf", ["a"], ["e"], name="erf"),
            helper.make_node("Add", ["e", "one"], ["e1"], name="add1"),
            helper.make_node("Mul", ["x", "e1"], ["xm"], name="mulx"),
            helper.make_node("Mul", ["xm", "half"], ["y"], name="mulh")]


def _gelu_tanh_nodes():
    return [helper.make_node("Pow", ["x", "three"], ["x3"], name="cube"),
            helper.make_node("Mul", ["x3", "c"], ["cx3"], name="mulc"),
            helper.make_node("Add", ["x", "cx3"], ["inner"], name="addi"),
            helper.make_node("Mul", ["inner", "k"], ["ki"], name="mulk"),
            helper.make_node("Tanh", ["ki"], ["t"], name="tanh"),
            helper.make_node("Add", ["t", "one"], ["t1"], name="add1"),
            helper.make_node("Mul", ["x", "half"], ["hx"], name="halfx"),
            helper.make_node("Mul", ["hx", "t1"], ["y"], name="mul")]


GELU_INITS = {"sqrt2": np.array(math.sqrt(2), np.float32), "one": np.array(1.0, np.float32),
              "half": np.array(0.5, np.float32), "three": np.array(3.0, np.float32),
              "c": np.array(0.044715, np.float32), "k": np.array(math.sqrt(2 / math.pi), np.float32)}


def test_gelu_forms_are_one_unit_quantized_at_input_and_output():
    rng = np.random.default_rng(5)
    x = rng.normal(scale=2.0, size=(1, 16)).astype(np.float32)
    erf = np.vectorize(math.erf)
    forms = {
        "erf": (_gelu_erf_nodes(), 17, lambda v: 0.5 * v * (1 + erf(v / math.sqrt(2)))),
        "tanh": (_gelu_tanh_nodes(), 17,
                 lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))),
        "op": ([helper.make_node("Gelu", ["x"], ["y"], name="gelu")], 20,
               lambda v: 0.5 * v * (1 + erf(v / math.sqrt(2)))),
    }
    for name, (nodes, opset, ref_fn) in forms.items():
        g = _graph(nodes, GELU_INITS, [_vi("x", (1, 16))], [_vi("y", (1, 16))], opset=opset)
        ops, sp, model, vals, out = _simulate(g, {"x": x})
        compute = [o for o in ops if o.kind == "compute"]
        assert len(compute) == 1 and compute[0].family == "Gelu", name
        assert len(compute[0].nodes) == len(nodes) and not sp.unsupported, name
        assert _qpoints(model) == {"x::q", "y"}, name
        ref = _fq_act(ref_fn(_fq_act(x, vals, "x").astype(np.float64)), vals, "y")
        _close(out["y"], ref, _asym(float(vals["y"].min()), float(vals["y"].max()))[0])


# ------------------------------------------------------------------ embedding Gather, int64 paths
def _embedding(rng):
    table = rng.normal(size=(10, 4)).astype(np.float32)
    table[3] *= 50  # one token's row much larger: per-row and per-tensor quantization differ
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0, name="embed"),
             helper.make_node("Shape", ["emb"], ["shp"], name="shape"),
             helper.make_node("Reshape", ["emb", "shp"], ["y"], name="reshape")]
    g = _graph(nodes, {"table": table}, [_vi("ids", (1, 5), TensorProto.INT64)],
               [_vi("y", (1, 5, 4)), _vi("shp", (3,), TensorProto.INT64)])
    return g, table


def test_embedding_table_is_a_weight_indices_untouched():
    rng = np.random.default_rng(6)
    g, table = _embedding(rng)
    ids = np.array([[3, 1, 4, 1, 5]], np.int64)
    for profile, axis in (("generic", 0), ("ort", None)):
        ops, sp, model, vals, out = _simulate(g, {"ids": ids}, profile=profile, outputs=["y", "shp"])
        op = _op(ops, "embed")
        assert op.kind == "compute" and op.op_type == "Gather(embedding)" and op.weighted == ["embed"]
        assert op.inputs == [] and not any(o.kind == "input" for o in ops)  # int64 ids: never quantized
        wq = _fq_weight(table, axis=axis)
        np.testing.assert_allclose(sp.weights["embed"], wq, atol=1e-6)
        assert _qpoints(model) == {"emb"}
        # the int64 tensors reach their consumers unchanged and come out exact
        readers = [n for n in model.graph.node if "ids" in n.input or "shp" in n.input]
        assert {n.op_type for n in readers} == {"Gather", "Reshape"}
        np.testing.assert_array_equal(out["shp"], [1, 5, 4])
        ref = _fq_act(wq[ids], vals, "emb")
        _close(out["y"], ref, _asym(float(vals["emb"].min()), float(vals["emb"].max()))[0])
    assert not np.allclose(_fq_weight(table, axis=0), _fq_weight(table), atol=1e-3)


# ------------------------------------------------------------------ attention mask
def _masked_scores(mask_const=-10000.0):
    nodes = [helper.make_node("Cast", ["mask"], ["mf"], to=F, name="cast"),
             helper.make_node("Sub", ["one", "mf"], ["inv"], name="inv"),
             helper.make_node("Mul", ["inv", "big"], ["bias"], name="scale"),
             helper.make_node("Unsqueeze", ["bias", "ax"], ["bias4"], name="unsq"),
             helper.make_node("Add", ["x", "bias4"], ["s"], name="add"),
             helper.make_node("Softmax", ["s"], ["y"], axis=-1, name="sm")]
    inits = {"one": np.array(1.0, np.float32), "big": np.array(mask_const, np.float32),
             "ax": np.array([1], np.int64)}
    return _graph(nodes, inits, [_vi("x", (1, 2, 6)), _vi("mask", (1, 6), TensorProto.INT64)],
                  [_vi("y", (1, 2, 6))])


def test_mask_branch_stays_float_and_the_add_is_quantized():
    g = _masked_scores()
    rng = np.random.default_rng(7)
    x = rng.normal(scale=3.0, size=(1, 2, 6)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 0, 0]], np.int64)
    ops, sp, model, vals, out = _simulate(g, {"x": x, "mask": mask}, outputs=["y", "s"])
    for key in ("cast", "inv", "scale", "unsq"):
        assert _op(ops, key).kind == "float" and _op(ops, key).family == "mask"
    assert sp.unsupported == []  # float by rule, not an unsupported op
    assert _qpoints(model) == {"x::q", "s", "y"}  # nothing on the mask branch
    assert [t for _, _, t in _op(ops, "add").inputs] == ["x"]  # the mask is never an input point
    xq = _fq_act(x, vals, "x")
    s = _fq_act(xq + (1 - mask[:, None, :].astype(np.float32)) * -10000.0, vals, "s")
    _close(out["s"], s, _asym(float(vals["s"].min()), float(vals["s"].max()))[0])
    _close(out["y"], _fq(_softmax(s), 1 / 256, -128, -128, 127), 1 / 256)
    # the hazard: scores of width ~|x| keep far fewer than 16 of 255 levels next to -1e4
    hz = [h for h in find_hazards(g, _ranges(vals)) if h.kind == "mask_add"]
    assert len(hz) == 1 and hz[0].node == "add"
    w = float(vals["x"].max() - min(vals["x"].min(), 0) if vals["x"].min() < 0 else vals["x"].max())
    assert abs(hz[0].numbers["levels_left"] - 255 * w / (w + 10000)) < 1e-6


def test_mask_hazard_thresholds():
    g = _masked_scores()
    r = {"x": (-5.0, 5.0), "s": (-10005.0, 5.0)}
    assert [h.kind for h in mask_add(g, r, bits=8)] == ["mask_add"]  # 255*10/10010 = 0.25 levels
    assert mask_add(g, r, bits=16) == []  # 65535*10/10010 = 65.5 >= 16 levels
    assert mask_add(_masked_scores(-100.0), {"x": (-5.0, 5.0)}, bits=8) == []  # not a mask-sized constant
    # where(mask, 0, -inf) added to scores: an int tensor cannot hold it, whatever the widths
    nodes = [helper.make_node("Where", ["m", "zero", "ninf"], ["bias"], name="where"),
             helper.make_node("Add", ["x", "bias"], ["y"], name="add")]
    g2 = _graph(nodes, {"zero": np.array(0.0, np.float32), "ninf": np.array(-np.inf, np.float32)},
                [_vi("x", (1, 4)), _vi("m", (1, 4), TensorProto.BOOL)], [_vi("y", (1, 4))])
    ops = build_quant_ops(g2)
    assert _op(ops, "where").family == "mask"
    hz = mask_add(g2, {"x": (-5.0, 5.0)}, bits=16)
    assert len(hz) == 1 and hz[0].numbers["levels_left"] == 0.0


def test_mask_detection_needs_a_mask_constant():
    # a u8 image normalized by Cast/Sub/Div is data, not a mask: its Div output stays a quantization point
    nodes = [helper.make_node("Cast", ["img"], ["f"], to=F, name="cast"),
             helper.make_node("Sub", ["f", "mean"], ["c"], name="sub"),
             helper.make_node("Div", ["c", "std"], ["y"], name="div")]
    g = _graph(nodes, {"mean": np.array(127.5, np.float32), "std": np.array(58.0, np.float32)},
               [_vi("img", (1, 4), TensorProto.UINT8)], [_vi("y", (1, 4))])
    ops = build_quant_ops(g)
    assert _op(ops, "div").kind == "compute" and not any(o.family == "mask" for o in ops)
    # a float 0/1 mask input whose branch applies -10000: float, and the input is not quantized either
    nodes = [helper.make_node("Sub", ["one", "m"], ["inv"], name="inv"),
             helper.make_node("Mul", ["inv", "big"], ["bias"], name="scale"),
             helper.make_node("Add", ["x", "bias"], ["y"], name="add")]
    g = _graph(nodes, {"one": np.array(1.0, np.float32), "big": np.array(-1e4, np.float32)},
               [_vi("x", (1, 4)), _vi("m", (1, 4))], [_vi("y", (1, 4))])
    ops = build_quant_ops(g)
    assert [o.key for o in ops if o.kind == "input"] == ["x"]
    assert [o.key for o in ops if o.family == "mask"] == ["inv", "scale"]
    assert _op(ops, "add").kind == "compute" and [t for _, _, t in _op(ops, "add").inputs] == ["x"]


# ------------------------------------------------------------------ BatchNorm, ConvTranspose, Resize
def test_standalone_batchnorm_is_a_quantized_op_with_weights():
    rng = np.random.default_rng(8)
    c = 3
    scale = np.array([1.0, 0.01, 5.0], np.float32)  # very different per-channel factors
    bias, mean = rng.normal(size=c).astype(np.float32), rng.normal(size=c).astype(np.float32)
    var = rng.uniform(0.5, 2, c).astype(np.float32)
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3, name="bn")]
    g = _graph(nodes, {"s": scale, "b": bias, "m": mean, "v": var}, [_vi("x", (1, c, 2, 2))],
               [_vi("y", (1, c, 2, 2))])
    x = rng.normal(size=(1, c, 2, 2)).astype(np.float32)
    cfg = QuantConfig(scheme=QuantScheme(per_channel_weights=False))
    ops, sp, model, vals, out = _simulate(g, {"x": x}, cfg=cfg)
    assert _op(ops, "bn").kind == "compute" and _op(ops, "bn").weighted == ["bn"]
    assert _qpoints(model) == {"x::q", "y"}
    a = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-3)
    aq = _fq_weight(a)  # per tensor: the 0.01 channel loses most of its precision
    sh = (bias - mean * a)[None, :, None, None]
    ref = _fq_act(_fq_act(x, vals, "x") * aq[None, :, None, None] + sh, vals, "y")
    _close(out["y"], ref, _asym(float(vals["y"].min()), float(vals["y"].max()))[0])


def test_grouped_convtranspose_weights_per_output_channel():
    rng = np.random.default_rng(9)
    group, cin, cout_g = 2, 4, 3
    w = rng.normal(size=(cin, cout_g, 2, 2)).astype(np.float32)
    w[cin // group:] *= 10  # group 1's channels are 10x group 0's: a scale shared per axis-1 index is wrong
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=group, strides=[2, 2], name="ct")]
    g = _graph(nodes, {"w": w}, [_vi("x", (1, cin, 2, 2))], [_vi("y", (1, cout_g * group, 4, 4))])
    x = rng.normal(size=(1, cin, 2, 2)).astype(np.float32)
    ops, sp, model, vals, out = _simulate(g, {"x": x})
    ref = np.empty_like(w)
    per_in = cin // group
    for gi in range(group):  # output channel gi*cout_g + j uses w[gi*per_in:(gi+1)*per_in, j]
        for j in range(cout_g):
            blk = w[gi * per_in:(gi + 1) * per_in, j]
            s = np.abs(blk).max() / 127
            ref[gi * per_in:(gi + 1) * per_in, j] = np.clip(np.round(blk / s), -127, 127) * s
    np.testing.assert_allclose(sp.weights["ct"], ref, atol=1e-6)
    assert not np.allclose(sp.weights["ct"], _fq_weight(w, axis=1), atol=1e-4)
    assert _qpoints(model) == {"x::q", "y"}


def test_resize_nearest_passes_through_linear_requantizes():
    for mode, want in (("nearest", {"x::q"}), ("linear", {"x::q", "y"})):
        nodes = [helper.make_node("Resize", ["x", "", "sc"], ["y"], mode=mode, name="rs")]
        g = _graph(nodes, {"sc": np.array([1, 1, 2, 2], np.float32)}, [_vi("x", (1, 1, 2, 2))],
                   [_vi("y", (1, 1, 4, 4))])
        x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2) / 3
        ops, _, model, vals, out = _simulate(g, {"x": x})
        assert _op(ops, "rs").kind == ("passthrough" if mode == "nearest" else "compute")
        assert _qpoints(model) == want
        if mode == "nearest":  # the values stay on the input's grid
            xq = _fq_act(x, vals, "x")
            np.testing.assert_allclose(out["y"], np.repeat(np.repeat(xq, 2, 2), 2, 3), atol=1e-6)


# ------------------------------------------------------------------ hazards
def test_softmax_range_hazard_threshold():
    nodes = [helper.make_node("Reshape", ["x", "shp"], ["r"], name="rs"),
             helper.make_node("Softmax", ["r"], ["y"], name="sm")]
    g = _graph(nodes, {"shp": np.array([1, 8], np.int64)}, [_vi("x", (8,))], [_vi("y", (1, 8))])
    limit = 255 * math.log(256) / 16  # 88.4: width where the top ln(256) keeps 16 int8 levels
    hz = softmax_range(g, {"x": (-150.0, 50.0)})  # traced through the Reshape
    assert len(hz) == 1 and abs(hz[0].numbers["threshold_width"] - limit) < 1e-9
    assert abs(hz[0].numbers["levels_in_window"] - math.log(256) / (200 / 255)) < 0.01
    assert softmax_range(g, {"x": (-10.0, 10.0)}) == []
    assert softmax_range(g, {"x": (-150.0, 50.0)}, bits=16) == []
    assert softmax_range(g, {"x": (0.0, limit * 1.01)}) and not softmax_range(g, {"x": (0.0, limit * 0.99)})


def test_layernorm_outlier_hazard_threshold():
    g, _ = _ln_graph(_ln_decomposed(), np.random.default_rng(3))
    assert norm_inputs(g) == {"h": "rm1"}
    g2, _ = _ln_graph(_ln_fused(), np.random.default_rng(3))
    assert norm_inputs(g2) == {"h": "ln"}
    outlier = np.array([1.0, 1.2, 0.9, 100.0, 1.1, 1.0])  # median 1.05: 255*1.05/100 = 2.7 levels
    hz = norm_outliers(g, {"h": outlier})
    assert len(hz) == 1 and hz[0].numbers["outlier_channel"] == 3
    assert abs(hz[0].numbers["levels_left"] - 255 * 1.05 / 100) < 1e-9
    assert norm_outliers(g, {"h": np.array([1.0, 1.2, 0.9, 10.0, 1.1, 1.0])}) == []  # 26.8 levels
    assert norm_outliers(g, {"h": outlier}, bits=16) == []
    assert [h.kind for h in find_hazards(g, {}, channel_absmax={"h": outlier})] == ["norm_outlier"]
