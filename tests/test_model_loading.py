"""Real-export shapes of graphs load, compare and bisect: Constant nodes of every kind, shape math, opsets
11-21, external data, several inputs/outputs, control flow; bad inputs give one line and exit 2.

Every model is generated here with onnx.helper, small and deterministic; float values are checked against
onnx's reference evaluator, which shares no code with qdebug or onnxruntime.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qdebug.cli import main
from qdebug.graph.fusion import build_quant_ops
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import QuantConfig
from qdebug.runners.session import OrtSession
from qdebug.runners.sim import SimBackend

S, D = 4, 8  # tokens, width


def _const(name: str, opset: int, value, kind: str = "value") -> onnx.NodeProto:
    """A Constant node as torch.onnx writes them; `value_*` kinds exist from opset 12, else a `value` tensor."""
    arr = np.asarray(value)
    arr = arr.astype(np.float32) if arr.dtype == np.float64 else arr  # python floats are float32 attributes
    if kind == "value" or opset < 12:
        return helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(arr, name))
    return helper.make_node("Constant", [], [name], name=name, **{kind: value})


def _model(nodes, inputs, outputs, inits, opset: int) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "t", inputs, outputs, inits)
    ops = [helper.make_opsetid("", opset)]
    m = helper.make_model(g, opset_imports=ops)
    m.ir_version = helper.find_min_ir_version_for(ops)
    onnx.checker.check_model(m)
    return m


def _unsqueeze(x: str, y: str, axes: list[int], opset: int, nodes: list) -> None:
    if opset < 13:
        nodes.append(helper.make_node("Unsqueeze", [x], [y], name=y, axes=axes))
    else:
        nodes += [_const(y + "_axes", opset, np.array(axes, np.int64)),
                  helper.make_node("Unsqueeze", [x, y + "_axes"], [y], name=y)]


def _reduce_mean(x: str, y: str, opset: int, nodes: list) -> None:
    if opset < 18:
        nodes.append(helper.make_node("ReduceMean", [x], [y], name=y, axes=[-1]))
    else:
        nodes += [_const(y + "_axes", opset, np.array([-1], np.int64)),
                  helper.make_node("ReduceMean", [x, y + "_axes"], [y], name=y)]


def attention_model(opset: int) -> onnx.ModelProto:
    """Attention as torch exports it: MatMul(q, k^T), then a 0-d Constant scale placed after that MatMul,
    Softmax, MatMul(p, v); a Shape->Gather->Unsqueeze->Concat->Reshape chain; a float factor computed from a
    shape (sqrt(d)); a LayerNorm decomposition (Pow by a Constant); a Constant shared by two consumers; a
    sparse Constant; a Constant that is a graph output."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((D, D)) * 0.5).astype(np.float32), w)
             for w in ("wq", "wk", "wv")]
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([0.5, -0.25], np.float32), "sp"),
                                       numpy_helper.from_array(np.array([1, 7], np.int64), "sp_i"), [S * D])
    n = [helper.make_node("MatMul", ["x", w], [w[1]], name=f"/attn/{w}") for w in ("wq", "wk", "wv")]
    n += [helper.make_node("Transpose", ["k"], ["kt"], name="/attn/Transpose", perm=[0, 2, 1]),
          helper.make_node("MatMul", ["q", "kt"], ["s"], name="/attn/MatMul"),
          _const("/attn/Constant_1_output_0", opset, np.array(0.35, np.float32)),  # after its consumer's anchor
          helper.make_node("Mul", ["s", "/attn/Constant_1_output_0"], ["ss"], name="/attn/Mul"),
          helper.make_node("Softmax", ["ss"], ["p"], name="/attn/Softmax", axis=-1),
          helper.make_node("MatMul", ["p", "v"], ["a"], name="/attn/MatMul_1"),
          helper.make_node("Shape", ["x"], ["sh"], name="/Shape"),
          _const("i0", opset, np.array(0, np.int64)),
          helper.make_node("Gather", ["sh", "i0"], ["b"], name="/Gather", axis=0)]
    _unsqueeze("b", "b1", [0], opset, n)
    n += [_const("minus1", opset, [-1], "value_ints"),
          helper.make_node("Concat", ["b1", "minus1"], ["newshape"], name="/Concat", axis=0),
          helper.make_node("Reshape", ["a", "newshape"], ["flat"], name="/Reshape"),
          _const("i2", opset, 2, "value_int"),
          helper.make_node("Gather", ["sh", "i2"], ["dim"], name="/Gather_1", axis=0),
          helper.make_node("Cast", ["dim"], ["dimf"], name="/Cast", to=TensorProto.FLOAT),
          helper.make_node("Sqrt", ["dimf"], ["rt"], name="/Sqrt"),
          helper.make_node("Div", ["flat", "rt"], ["yd"], name="/Div"),
          _const("bias", opset, [0.1 * i for i in range(S * D)], "value_floats"),
          helper.make_node("Add", ["yd", "bias"], ["yb"], name="/Add"),
          helper.make_node("Constant", [], ["spc"], name="/SparseConstant", sparse_value=sparse),
          helper.make_node("Add", ["yb", "spc"], ["y"], name="/Add_1")]
    _reduce_mean("a", "mu", opset, n)
    n += [helper.make_node("Sub", ["a", "mu"], ["dd"], name="/ln/Sub"),
          _const("two", opset, 2.0, "value_float"),
          helper.make_node("Pow", ["dd", "two"], ["sq"], name="/ln/Pow")]
    _reduce_mean("sq", "var", opset, n)
    n += [_const("eps", opset, np.array(1e-5, np.float32)),
          helper.make_node("Add", ["var", "eps"], ["ve"], name="/ln/Add"),
          helper.make_node("Sqrt", ["ve"], ["sd"], name="/ln/Sqrt"),
          helper.make_node("Div", ["dd", "sd"], ["nrm"], name="/ln/Div"),
          helper.make_node("Mul", ["nrm", "/attn/Constant_1_output_0"], ["y2"], name="/ln/Mul"),  # shared
          _const("shape_out", opset, [S, D], "value_ints")]
    return _model(n, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, S, D])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, S * D]),
                   helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, S, D]),
                   helper.make_tensor_value_info("shape_out", TensorProto.INT64, [2])], inits, opset)


def _x_data(folder, n: int = 3) -> list[np.ndarray]:
    folder.mkdir()
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((1, S, D)).astype(np.float32) for _ in range(n)]
    for i, x in enumerate(xs):
        np.save(folder / f"{i}.npy", x)
    return xs


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    return rc, " ".join(capsys.readouterr().err.split())


def _compare_ok(m: onnx.ModelProto, path, capsys) -> dict:
    """Save `m` to `path`, compare it on the samples in the folder `d` beside it; the JSON (exit 0 asserted)."""
    onnx.save(m, str(path))
    out = path.parent / "c.json"
    rc, err = run_cli(["compare", path, "--data", path.parent / "d", "--json", out], capsys)
    assert rc == 0, err
    return json.loads(out.read_text())


def _rows(doc: dict) -> dict[str, dict]:
    return {r["tensor"]: r for r in doc["tensors"]}


def _check_float_ranges(doc: dict, model: onnx.ModelProto, feeds: list[dict], names: list[str]) -> None:
    """The float range qdebug reports equals the reference evaluator's min/max over the samples."""
    dense = onnx.ModelProto()
    dense.CopyFrom(model)
    for n in dense.graph.node:  # the reference evaluator runs no sparse Constant: give it the dense value
        if n.op_type == "Constant" and n.attribute[0].name == "sparse_value":
            sp = n.attribute[0].sparse_tensor
            val = np.zeros(tuple(sp.dims), np.float32)
            val[numpy_helper.to_array(sp.indices)] = numpy_helper.to_array(sp.values)
            del n.attribute[:]
            n.attribute.append(helper.make_attribute("value", numpy_helper.from_array(val)))
    ref = ReferenceEvaluator(dense)
    outs = [ref.run(names, f) for f in feeds]
    rows = _rows(doc)
    for k, name in enumerate(names):
        lo = min(float(o[k].min()) for o in outs)
        hi = max(float(o[k].max()) for o in outs)
        got = rows[name]["float_range"]
        assert got == pytest.approx([lo, hi], rel=1e-4, abs=1e-5), name


@pytest.mark.parametrize("opset", list(range(11, 22)))
def test_attention_compare_every_opset(opset, tmp_path, capsys):
    m = attention_model(opset)
    xs = _x_data(tmp_path / "d")
    doc = _compare_ok(m, tmp_path / "m.onnx", capsys)
    rows = _rows(doc)
    _check_float_ranges(doc, m, [{"x": x} for x in xs], ["y", "y2"])
    # shape math (int64 chain and the float sqrt(d) computed from a shape) is neither compared nor quantized
    for t in ("sh", "b", "b1", "newshape", "dim", "dimf", "rt", "shape_out"):
        assert t not in rows
    groups = {g["key"]: g for g in doc["quant"]["groups"]}
    assert "/Sqrt" not in groups and "/Cast" not in groups
    assert rows["q"]["quantized"] and rows["ss"]["group"] == "/attn/MatMul"  # the scale Mul fused into MatMul
    assert [o["tensor"] for o in doc["outputs"]] == ["y", "y2"]


@pytest.mark.parametrize("opset", [11, 21])
@pytest.mark.parametrize("cut", ["one-pass", "truncation"])
def test_attention_bisect(opset, cut, tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(attention_model(opset), str(path))
    _x_data(tmp_path / "d")
    out = tmp_path / "b.json"
    rc, err = run_cli(["bisect", path, "--data", tmp_path / "d", "--target", "y:snr_db>=80", "--cut-search", cut,
                       "--json", out], capsys)
    assert rc in (0, 1), err  # 1: target not reachable; the search itself must finish
    doc = json.loads(out.read_text())
    assert doc["evaluations"], "bisect evaluated nothing"


def test_fused_group_reading_a_later_constant_is_topologically_sorted(tmp_path):
    """The reported bug: MatMul+Mul(const) is emitted at the MatMul, before the Constant the Mul reads; the
    pruned cumulative model must still be in topological order (the ONNX checker verifies it) and run."""
    path = tmp_path / "m.onnx"
    onnx.save(attention_model(17), str(path))
    g = ModelGraph.load(path)
    xs = _x_data(tmp_path / "d", 2)
    be = SimBackend()
    cfg = QuantConfig()
    be.prepare(g, cfg, [{"x": x} for x in xs])
    q = be.quantized_model(g, cfg, ["ss", "y"])  # a subset of outputs: pruning happens
    known = {i.name for i in q.graph.input} | {t.name for t in q.graph.initializer}
    for n in q.graph.node:  # topological: each input made before it is read
        assert all(i in known for i in n.input if i), n.name
        known.update(n.output)
    assert any(n.op_type == "Constant" and n.output[0] == "/attn/Constant_1_output_0" for n in q.graph.node)
    vals = OrtSession(q).run({"x": xs[0]})
    assert vals["y"].shape == (1, S * D)


def test_external_data_model(tmp_path, capsys):
    m = attention_model(17)
    inline = tmp_path / "inline.onnx"
    onnx.save(m, str(inline))
    ext_dir = tmp_path / "ext"
    ext_dir.mkdir()
    ext = ext_dir / "m.onnx"
    onnx.save_model(m, str(ext), save_as_external_data=True, all_tensors_to_one_file=True, location="m.weights",
                    size_threshold=0)
    side = ext_dir / "m.weights"
    before = (hashlib.sha256(side.read_bytes()).hexdigest(), side.stat().st_mtime_ns)
    xs = _x_data(tmp_path / "d")
    docs = []
    for p in (inline, ext):
        out = tmp_path / f"{p.stem}.json"
        rc, err = run_cli(["compare", p, "--data", tmp_path / "d", "--json", out], capsys)
        assert rc == 0, err
        docs.append(json.loads(out.read_text()))
    assert (hashlib.sha256(side.read_bytes()).hexdigest(), side.stat().st_mtime_ns) == before
    assert sorted(p.name for p in ext_dir.iterdir()) == ["m.onnx", "m.weights"]  # nothing written beside it
    assert [r["cumulative"] for r in docs[0]["tensors"]] == [r["cumulative"] for r in docs[1]["tensors"]]
    # a session too large to serialize in one piece goes through a temporary side file: same numbers
    g = ModelGraph.load(ext)
    big = OrtSession(g.model, inline_limit=0)
    assert big._tmp is not None
    small = OrtSession(g.model)
    for a, b in zip(big.run({"x": xs[0]}).values(), small.run({"x": xs[0]}).values(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_external_data_side_file_missing(tmp_path, capsys):
    ext = tmp_path / "m.onnx"
    onnx.save_model(attention_model(17), str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.weights", size_threshold=0)
    (tmp_path / "m.weights").unlink()
    _x_data(tmp_path / "d")
    out = tmp_path / "c.json"
    rc, err = run_cli(["compare", ext, "--data", tmp_path / "d", "--json", out], capsys)
    assert rc == 2 and "m.onnx" in err and "'m.weights' not found" in err and "fix:" in err
    assert "Traceback" not in err and not out.exists()


# ----------------------------------------------------------------- several inputs
VOCAB = 10


def token_model() -> onnx.ModelProto:
    """input_ids (int64) index an embedding table; a bool mask and an int32 segment input; two outputs."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal((VOCAB, D)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.standard_normal((2, D)).astype(np.float32), "seg_emb"),
             numpy_helper.from_array((rng.standard_normal((D, D)) * 0.5).astype(np.float32), "w")]
    n = [helper.make_node("Gather", ["emb", "input_ids"], ["e"], name="/emb/Gather"),
         helper.make_node("Cast", ["segment"], ["seg64"], name="/seg/Cast", to=TensorProto.INT64),
         helper.make_node("Gather", ["seg_emb", "seg64"], ["se"], name="/seg/Gather"),
         helper.make_node("Add", ["e", "se"], ["h"], name="/Add"),
         helper.make_node("MatMul", ["h", "w"], ["hw"], name="/MatMul"),
         helper.make_node("Unsqueeze", ["mask", "ax"], ["m3"], name="/Unsqueeze"),
         helper.make_node("Constant", [], ["zero"], name="/zero", value=numpy_helper.from_array(
             np.array(0.0, np.float32))),
         helper.make_node("Where", ["m3", "hw", "zero"], ["out"], name="/Where"),
         helper.make_node("ReduceSum", ["out", "ax1"], ["pooled"], name="/ReduceSum", keepdims=0)]
    inits += [numpy_helper.from_array(np.array([-1], np.int64), "ax"),
              numpy_helper.from_array(np.array([1], np.int64), "ax1")]
    return _model(n, [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, S]),
                      helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, S]),
                      helper.make_tensor_value_info("segment", TensorProto.INT32, [1, S])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, S, D]),
                   helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, D])], inits, 17)


def _token_data(folder, n: int = 3) -> list[dict]:
    folder.mkdir()
    rng = np.random.default_rng(11)
    feeds = []
    for i in range(n):
        f = {"input_ids": rng.integers(0, VOCAB, (1, S)).astype(np.int64),
             "mask": np.array([[True] * (S - i) + [False] * i]),
             "segment": np.array([[0, 0, 1, 1]], np.int32)}
        np.savez(folder / f"{i}.npz", **f)
        feeds.append(f)
    return feeds


def test_several_inputs_ints_fed_as_given(tmp_path, capsys):
    m = token_model()
    feeds = _token_data(tmp_path / "d")
    path = tmp_path / "tok.onnx"
    doc = _compare_ok(m, path, capsys)
    rows = _rows(doc)
    # the embedding rows are exactly the table rows of the given ids: nothing quantized or rescaled the ids
    emb = numpy_helper.to_array(m.graph.initializer[0])
    ids = np.concatenate([f["input_ids"] for f in feeds])
    assert rows["e"]["float_range"] == pytest.approx([emb[ids].min(), emb[ids].max()], rel=1e-5)
    _check_float_ranges(doc, m, feeds, ["out", "pooled"])
    kinds = {g["key"]: g["kind"] for g in doc["quant"]["groups"]}
    assert not any(k in kinds for k in ("input_ids", "mask", "segment"))
    assert {o["tensor"] for o in doc["outputs"]} == {"out", "pooled"}
    rc, err = run_cli(["bisect", path, "--data", tmp_path / "d", "--target", "out:snr_db>=80",
                       "--json", tmp_path / "b.json"], capsys)
    assert rc in (0, 1), err


@pytest.mark.parametrize("case,expect", [
    ("missing_key", ["1.npz", "missing mask"]),
    ("fraction", ["1.npz", "input_ids", "0.5", "not an integer"]),
    ("shape", ["1.npz", "segment", "(1, 3)"]),
    ("id_range", ["1.npz", "input_ids", f"value {VOCAB}", f"{VOCAB} rows of table 'emb'"]),
    ("negative_id", ["1.npz", "input_ids", f"value {-VOCAB - 1}", "'emb'"]),
])
def test_bad_token_inputs(case, expect, tmp_path, capsys):
    path = tmp_path / "tok.onnx"
    onnx.save(token_model(), str(path))
    feeds = _token_data(tmp_path / "d")
    bad = dict(feeds[1])
    if case == "missing_key":
        del bad["mask"]
    elif case == "fraction":
        bad["input_ids"] = np.array([[1, 0.5, 2, 3]], np.float32)
    elif case == "shape":
        bad["segment"] = np.zeros((1, 3), np.int32)
    elif case == "id_range":
        bad["input_ids"] = np.array([[1, 2, VOCAB, 3]], np.int64)
    else:
        bad["input_ids"] = np.array([[1, 2, -VOCAB - 1, 3]], np.int64)
    np.savez(tmp_path / "d" / "1.npz", **bad)
    out = tmp_path / "c.json"
    rc, err = run_cli(["compare", path, "--data", tmp_path / "d", "--json", out], capsys)
    assert rc == 2 and "fix:" in err and "Traceback" not in err, err
    for e in expect:
        assert e in err, (e, err)
    assert not out.exists()


# ----------------------------------------------------------------- control flow
def control_flow_model() -> onnx.ModelProto:
    """If (branches read the outer tensor h), Loop (2 trips, body reads h) and Scan (running sum)."""
    rng = np.random.default_rng(9)
    w = numpy_helper.from_array((rng.standard_normal((D, D)) * 0.5).astype(np.float32), "w")
    vi = helper.make_tensor_value_info
    then_g = helper.make_graph([helper.make_node("Relu", ["h"], ["t_out"], name="then_relu")], "then", [],
                               [vi("t_out", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["h"], ["e_out"], name="else_neg")], "else", [],
                               [vi("e_out", TensorProto.FLOAT, None)])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="b_id"),
         helper.make_node("Mul", ["h", "half"], ["hh"], name="b_mul"),
         helper.make_node("Add", ["acc_in", "hh"], ["acc_out"], name="b_add")], "body",
        [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []), vi("acc_in", TensorProto.FLOAT, None)],
        [vi("cond_out", TensorProto.BOOL, []), vi("acc_out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    scan_body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "row"], ["s_out"], name="s_add"),
         helper.make_node("Identity", ["s_out"], ["s_scan"], name="s_id")], "scan_body",
        [vi("s_in", TensorProto.FLOAT, [D]), vi("row", TensorProto.FLOAT, [D])],
        [vi("s_out", TensorProto.FLOAT, [D]), vi("s_scan", TensorProto.FLOAT, [D])])
    n = [helper.make_node("MatMul", ["x", "w"], ["h"], name="/MatMul"),
         helper.make_node("ReduceSum", ["x"], ["tot"], name="/ReduceSum", keepdims=0),
         helper.make_node("Greater", ["tot", "zero"], ["cond"], name="/Greater"),
         helper.make_node("If", ["cond"], ["branch"], name="/If", then_branch=then_g, else_branch=else_g),
         helper.make_node("Loop", ["trips", "", "init"], ["looped"], name="/Loop", body=body),
         helper.make_node("Squeeze", ["h", "ax0"], ["h2"], name="/Squeeze"),
         helper.make_node("Scan", ["init_row", "h2"], ["last", "running"], name="/Scan", body=scan_body,
                          num_scan_inputs=1),
         helper.make_node("Add", ["branch", "looped"], ["y"], name="/Add")]
    inits = [w, numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(2, np.int64), "trips"),
             numpy_helper.from_array(np.zeros((1, S, D), np.float32), "init"),
             numpy_helper.from_array(np.zeros(D, np.float32), "init_row"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0")]
    return _model(n, [vi("x", TensorProto.FLOAT, [1, S, D])],
                  [vi("y", TensorProto.FLOAT, [1, S, D]), vi("running", TensorProto.FLOAT, [S, D])], inits, 17)


def test_control_flow_stays_float(tmp_path, capsys):
    m = control_flow_model()
    xs = _x_data(tmp_path / "d")
    path = tmp_path / "cf.onnx"
    doc = _compare_ok(m, path, capsys)
    # float values by hand (onnx's reference evaluator gets this Loop wrong): If picks Relu(h) or -h, the
    # Loop adds 0.5 h twice, the Scan is a running sum over the tokens
    w = numpy_helper.to_array(m.graph.initializer[0])
    hs = [x @ w for x in xs]
    ys = [(np.maximum(h, 0) if x.sum() > 0 else -h) + h for x, h in zip(xs, hs, strict=True)]
    run = [np.cumsum(h[0], axis=0) for h in hs]
    rows = _rows(doc)
    for name, vals in (("y", ys), ("running", run)):
        want = [min(float(v.min()) for v in vals), max(float(v.max()) for v in vals)]
        assert rows[name]["float_range"] == pytest.approx(want, rel=1e-4, abs=1e-5), name
    groups = {g["key"]: g for g in doc["quant"]["groups"]}
    for name in ("/If", "/Loop", "/Scan"):
        assert groups[name]["kind"] == "float" and groups[name]["precision"] == "fp32"
    line = next(w for w in doc["warnings"] if "/If" in w)
    assert "/Loop" in line and "/Scan" in line and "\n" not in line
    rc, err = run_cli(["bisect", path, "--data", tmp_path / "d", "--target", "y:snr_db>=80", "--cut-search",
                       "truncation", "--json", tmp_path / "b.json"], capsys)
    assert rc in (0, 1), err


def test_truncation_keeps_what_a_subgraph_reads(tmp_path):
    """The If's branches read h without listing it as an input: a cut at the If must keep h's producer."""
    path = tmp_path / "cf.onnx"
    onnx.save(control_flow_model(), str(path))
    g = ModelGraph.load(path)
    assert [n.name for n in g.consumers["h"]][:2] == ["/If", "/Loop"]
    cut = g.truncate(["branch"])
    assert {n.name for n in cut.nodes} == {"/MatMul", "/ReduceSum", "/Greater", "/If"}
    x = np.random.default_rng(1).standard_normal((1, S, D)).astype(np.float32)
    got = OrtSession(cut.model).run({"x": x})["branch"]
    h = x @ numpy_helper.to_array(g.initializers["w"])
    np.testing.assert_allclose(got, np.maximum(h, 0) if x.sum() > 0 else -h, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- -Inf attention masks
def masked_softmax_model() -> onnx.ModelProto:
    """scores = x @ w; Where(mask, 0, -Inf) added before Softmax (torch's exported SDPA mask); the -Inf never
    reaches an output."""
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array((rng.standard_normal((D, S)) * 0.5).astype(np.float32), "w")
    n = [helper.make_node("MatMul", ["x", "w"], ["scores"], name="/MatMul"),
         helper.make_node("Constant", [], ["zero"], name="/zero",
                          value=numpy_helper.from_array(np.array([0.0], np.float32))),
         helper.make_node("Constant", [], ["ninf"], name="/ninf",
                          value=numpy_helper.from_array(np.array([-np.inf], np.float32))),
         helper.make_node("Where", ["mask", "zero", "ninf"], ["bias"], name="/Where"),
         helper.make_node("Add", ["scores", "bias"], ["masked"], name="/Add"),
         helper.make_node("Softmax", ["masked"], ["y"], name="/Softmax", axis=-1)]
    vi = helper.make_tensor_value_info
    return _model(n, [vi("x", TensorProto.FLOAT, [1, S, D]), vi("mask", TensorProto.BOOL, [1, 1, S])],
                  [vi("y", TensorProto.FLOAT, [1, S, S])], [w], 17)


@pytest.mark.parametrize("engine", ["in-graph", "arrays"])
def test_inf_attention_mask_is_not_an_error(engine, tmp_path):
    from qdebug.compare.stage import run_compare
    from qdebug.inputs.dataset import load_dataset

    m = masked_softmax_model()
    path = tmp_path / "mask.onnx"
    onnx.save(m, str(path))
    d = tmp_path / "d"
    d.mkdir()
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.standard_normal((1, S, D)).astype(np.float32),
              "mask": np.array([[[True] * (S - i) + [False] * i]])} for i in range(3)]
    for i, f in enumerate(feeds):
        np.savez(d / f"{i}.npz", **f)
    g = ModelGraph.load(path)
    res = run_compare(g, load_dataset(d, g), QuantConfig(), SimBackend(), engine=engine)
    assert res.engine == engine
    line = next(w for w in res.warnings if "Inf/NaN" in w)
    assert "masked" in line and "bias" in line
    out = next(o for o in res.outputs if o.tensor == "y")
    assert out.cumulative.snr_db is not None and out.cumulative.cosine > 0.9
    # the masked tensor's float range is that of its finite values: the scores where the mask is True
    w = numpy_helper.to_array(m.graph.initializer[0])
    kept = np.concatenate([(f["x"] @ w)[..., f["mask"][0, 0]].ravel() for f in feeds])
    row = next(r for r in res.tensors if r.tensor == "masked")
    assert row.cumulative.snr_db is not None  # from the sample without padding
    be = SimBackend()
    be.prepare(g, QuantConfig(), feeds)
    assert be.float_minmax["masked"] == pytest.approx((kept.min(), kept.max()), rel=1e-5)


def test_constant_after_its_consumer_in_the_file(tmp_path, capsys):
    """onnxruntime runs a graph whose Constant comes after the node reading it; qdebug sorts it in memory
    (the file stays as it is) and gives the same float values as the sorted model."""
    m = attention_model(17)
    nodes = list(m.graph.node)
    k = next(i for i, n in enumerate(nodes) if n.output[0] == "/attn/Constant_1_output_0")
    moved = nodes[:k] + nodes[k + 1:] + [nodes[k]]  # the scale Constant last
    del m.graph.node[:]
    m.graph.node.extend(moved)
    path = tmp_path / "late.onnx"
    onnx.save(m, str(path))
    raw = path.read_bytes()
    xs = _x_data(tmp_path / "d")
    out = tmp_path / "c.json"
    rc, err = run_cli(["compare", path, "--data", tmp_path / "d", "--json", out], capsys)
    assert rc == 0, err
    assert path.read_bytes() == raw
    _check_float_ranges(json.loads(out.read_text()), attention_model(17), [{"x": x} for x in xs], ["y", "y2"])


def test_backend_caches_never_mix_graphs():
    """Truncation search builds and frees many sub-graphs; a freed graph's id() is reused by the next one, so a
    cache keyed by id() handed a sub-graph another one's fused ops (KeyError on a weight it does not hold)."""
    g = ModelGraph(attention_model(17))
    b = SimBackend("generic")
    for node in g.nodes:
        sub = g.truncate([o for o in node.output if o])
        want = [(op.key, tuple(op.weighted)) for op in build_quant_ops(sub, fuse=True)]
        assert [(op.key, tuple(op.weighted)) for op in b.quant_ops(sub)] == want
        del sub
