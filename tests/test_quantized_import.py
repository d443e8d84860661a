"""Bring your own quantized model: a QDQ model from onnxruntime's quantize_static, and per-tensor .npy dumps.

Every number is checked against an independent computation made here with onnxruntime and numpy directly.
"""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdebug.cli import main
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QuantConfig, QuantScheme
from qdebug.runners.qdq import QdqBackend

quant = pytest.importorskip("onnxruntime.quantization")
N = 3
SHAPE = (1, 3, 8, 8)


def make_float() -> onnx.ModelProto:
    """Conv-Relu, Conv-SiLU, residual Add, Concat, MaxPool and a head Conv (float, deterministic)."""
    rng = np.random.default_rng(0)

    def w(name, *shape, s=0.3):
        return numpy_helper.from_array(rng.normal(0, s, shape).astype(np.float32), name)

    inits = [w("w1", 8, 3, 3, 3), w("b1", 8, s=.1), w("w2", 8, 8, 3, 3, s=.2), w("b2", 8, s=.1),
             w("w3", 4, 16, 1, 1, s=.2), w("b3", 4, s=.1)]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["/c1/Conv_output_0"], name="/c1/Conv", pads=[1] * 4),
             n("Relu", ["/c1/Conv_output_0"], ["/c1/Relu_output_0"], name="/c1/Relu"),
             n("Conv", ["/c1/Relu_output_0", "w2", "b2"], ["/c2/Conv_output_0"], name="/c2/Conv", pads=[1] * 4),
             n("Sigmoid", ["/c2/Conv_output_0"], ["/c2/Sigmoid_output_0"], name="/c2/Sigmoid"),
             n("Mul", ["/c2/Conv_output_0", "/c2/Sigmoid_output_0"], ["/c2/Mul_output_0"], name="/c2/Mul"),
             n("Add", ["/c2/Mul_output_0", "/c1/Relu_output_0"], ["/add/Add_output_0"], name="/add/Add"),
             n("Concat", ["/add/Add_output_0", "/c1/Conv_output_0"], ["/cat/Concat_output_0"], name="/cat/Concat",
               axis=1),
             n("MaxPool", ["/cat/Concat_output_0"], ["/pool/MaxPool_output_0"], name="/pool/MaxPool",
               kernel_shape=[2, 2], strides=[2, 2]),
             n("Conv", ["/pool/MaxPool_output_0", "w3", "b3"], ["y"], name="/head/Conv")]
    g = helper.make_graph(nodes, "byoq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def samples(n: int = N, seed: int = 10) -> list[np.ndarray]:
    return [np.random.default_rng(seed + i).normal(size=SHAPE).astype(np.float32) for i in range(n)]


class Reader(quant.CalibrationDataReader):
    def __init__(self) -> None:
        self.it = iter([{"x": s} for s in samples(4, seed=100)])

    def get_next(self):
        return next(self.it, None)


def quantize(src, dst, per_channel: bool) -> None:
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's pre-processing advice
    quant.quantize_static(str(src), str(dst), Reader(), quant_format=quant.QuantFormat.QDQ, per_channel=per_channel,
                          activation_type=quant.QuantType.QUInt8, weight_type=quant.QuantType.QInt8)


@pytest.fixture(scope="module", params=[True, False], ids=["per-channel", "per-tensor"])
def models(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("byoq")
    onnx.save(make_float(), str(d / "f.onnx"))
    quantize(d / "f.onnx", d / "q.onnx", request.param)
    data = d / "data"
    data.mkdir()
    for i, s in enumerate(samples()):
        np.save(data / f"{i:04d}.npy", s)
    return d


def cli(args, capsys):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, " ".join(cap.err.split())


def run(model: onnx.ModelProto, outputs: list[str], xs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Plain onnxruntime runs exposing `outputs` (independent of qdebug's sessions)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [dict(zip(outputs, sess.run(None, {"x": x}), strict=True)) for x in xs]


def snr(pairs) -> float:
    sx = sum(float(np.sum(x.astype(np.float64) ** 2)) for x, _ in pairs)
    sd = sum(float(np.sum((x.astype(np.float64) - y) ** 2)) for x, y in pairs)
    return 10 * np.log10(sx / sd)


def float_tensors(m: onnx.ModelProto) -> list[str]:
    return ["x"] + [o for n in m.graph.node for o in n.output]


def rows(doc: dict) -> dict[str, dict]:
    return {r["tensor"]: r for r in doc["tensors"]}


# ------------------------------------------------------------------ --quantized
def test_compare_matches_every_tensor_and_snr(models, capsys):
    d = models
    rc, err = cli(["compare", d / "f.onnx", "--quantized", d / "q.onnx", "--data", d / "data", "--json",
                   d / "c.json", "-q"], capsys)
    assert rc == 0, err
    doc = json.loads((d / "c.json").read_text())
    fm, qm = onnx.load(str(d / "f.onnx")), onnx.load(str(d / "q.onnx"))
    r = rows(doc)
    want = float_tensors(fm)
    assert set(r) == set(want) and doc["warnings"] == []
    assert all(r[t]["cumulative"]["snr_db"] is not None for t in want)
    # every op quantize_static quantized (a non-Q/DQ node reading a DequantizeLinear) is a quantized row
    dq_outs = {o for n in qm.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized_nodes = {n.name for n in qm.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                       and any(i in dq_outs for i in n.input)}
    assert {g["key"] for g in doc["quant"]["groups"] if g["kind"] == "compute"} == quantized_nodes
    # output and an inner tensor against the two models run here
    fl = run(fm, ["y", "/c2/Mul_output_0"], samples())
    qq = run(qm, ["y", "/c2/Mul_output_0_DequantizeLinear_Output"], samples())
    want_y = snr([(f["y"], q["y"]) for f, q in zip(fl, qq, strict=True)])
    want_mul = snr([(f["/c2/Mul_output_0"], q["/c2/Mul_output_0_DequantizeLinear_Output"])
                    for f, q in zip(fl, qq, strict=True)])
    assert doc["outputs"][0]["cumulative"]["snr_db"] == pytest.approx(want_y, abs=1e-3)
    assert r["/c2/Mul_output_0"]["cumulative"]["snr_db"] == pytest.approx(want_mul, abs=1e-3)


def _qdq(x: np.ndarray, s: float, zp: int) -> np.ndarray:
    """uint8 QuantizeLinear then DequantizeLinear (round half to even), in numpy."""
    return ((np.clip(np.rint(x / s) + zp, 0, 255) - zp) * s).astype(np.float32)


def test_isolated_relu_matches_numpy(models, capsys):
    d = models
    rc, err = cli(["compare", d / "f.onnx", "--quantized", d / "q.onnx", "--data", d / "data", "--json",
                   d / "i.json", "-q"], capsys)
    assert rc == 0, err
    qm = onnx.load(str(d / "q.onnx"))
    init = {t.name: numpy_helper.to_array(t) for t in qm.graph.initializer}
    s_in, z_in = float(init["/c1/Conv_output_0_scale"]), int(init["/c1/Conv_output_0_zero_point"])
    s_out, z_out = float(init["/c1/Relu_output_0_scale"]), int(init["/c1/Relu_output_0_zero_point"])
    fl = run(onnx.load(str(d / "f.onnx")), ["/c1/Conv_output_0", "/c1/Relu_output_0"], samples())
    iso = [(f["/c1/Relu_output_0"], _qdq(np.maximum(_qdq(f["/c1/Conv_output_0"], s_in, z_in), 0), s_out, z_out))
           for f in fl]
    got = rows(json.loads((d / "i.json").read_text()))["/c1/Relu_output_0"]["isolated"]["snr_db"]
    assert got == pytest.approx(snr(iso), abs=1e-3)


def test_fused_conv_relu_and_unmatched_tensor(tmp_path, models, capsys):
    """quantize_static folds a Relu whose Conv output has one reader: the Conv output is left unmatched."""
    fm = make_float()
    for n in fm.graph.node:
        if n.name == "/cat/Concat":
            n.input[1] = "/c1/Relu_output_0"
    onnx.save(fm, str(tmp_path / "f.onnx"))
    quantize(tmp_path / "f.onnx", tmp_path / "q.onnx", True)
    qm = onnx.load(str(tmp_path / "q.onnx"))
    assert "/c1/Conv_output_0" not in {o for n in qm.graph.node for o in n.output}  # what this test is about
    rc, err = cli(["compare", tmp_path / "f.onnx", "--quantized", tmp_path / "q.onnx", "--data", models / "data",
                   "--json", tmp_path / "c.json", "-q"], capsys)
    assert rc == 0, err
    doc = json.loads((tmp_path / "c.json").read_text())
    r = rows(doc)
    assert [w for w in doc["warnings"] if "not found" in w] == [w for w in doc["warnings"] if "/c1/Conv_output_0" in w]
    assert len([w for w in doc["warnings"] if "not found" in w]) == 1
    assert r["/c1/Conv_output_0"]["cumulative"]["snr_db"] is None and r["/c1/Conv_output_0"]["isolated"]["snr_db"] is None
    group = next(g for g in doc["quant"]["groups"] if g["key"] == "/c1/Conv")
    assert group["nodes"] == ["/c1/Conv", "/c1/Relu"] and group["outputs"] == ["/c1/Relu_output_0"]
    fl = run(fm, ["/c1/Relu_output_0"], samples())
    qq = run(qm, ["/c1/Relu_output_0_DequantizeLinear_Output"], samples())
    want = snr([(f["/c1/Relu_output_0"], q["/c1/Relu_output_0_DequantizeLinear_Output"])
                for f, q in zip(fl, qq, strict=True)])
    assert r["/c1/Relu_output_0"]["cumulative"]["snr_db"] == pytest.approx(want, abs=1e-3)


def test_mismatched_quantized_model(models, tmp_path, capsys):
    other = make_float()
    for n in other.graph.node:  # another model: same input, other tensor names
        n.output[:] = [o if o == "y" else o.replace("/", "/other") for o in n.output]
        n.input[:] = [i if i in ("x", "w1", "b1", "w2", "b2", "w3", "b3") else i.replace("/", "/other")
                      for i in n.input]
        n.name = "/other" + n.name
    other.graph.output[0].name = "z"
    other.graph.node[-1].output[0] = "z"
    onnx.save(other, str(tmp_path / "o.onnx"))
    quantize(tmp_path / "o.onnx", tmp_path / "oq.onnx", True)
    out = tmp_path / "c.json"
    rc, err = cli(["compare", models / "f.onnx", "--quantized", tmp_path / "oq.onnx", "--data", models / "data",
                   "--json", out], capsys)
    assert rc == 2 and "oq.onnx" in err and "/c1/Conv_output_0" in err and "fix:" in err and not out.exists()


def test_quantized_excludes_calib(models, capsys):
    rc, err = cli(["compare", models / "f.onnx", "--quantized", models / "q.onnx", "--data", models / "data",
                   "--calib", "hisi:nothing.txt"], capsys)
    assert rc == 2 and "--calib" in err and "fix:" in err


# ------------------------------------------------------------------ promotion (bisect)
def _config(keys) -> QuantConfig:
    return QuantConfig(scheme=QuantScheme(), overrides={k: Precision.INT16 for k in keys})


def test_promote_removes_exactly_the_pairs_around_the_op(models):
    d = models
    graph = ModelGraph.load(d / "f.onnx")
    be = QdqBackend(str(d / "q.onnx"), graph)
    qm = onnx.load(str(d / "q.onnx"))
    x = "/c2/Conv"
    node = next(n for n in qm.graph.node if n.name == x)
    cons = {}
    for n in qm.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    # pairs around X in the original: the one on its output, and input pairs that only X reads
    out_q = [c for c in cons[node.output[0]] if c.op_type == "QuantizeLinear"]
    in_dq = [n for n in qm.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in node.input]
    act_in = [n for n in in_dq if n.input[0] not in {t.name for t in qm.graph.initializer}]
    own_in = [n for n in act_in if len(cons[n.output[0]]) == 1]
    weight_dq = [n for n in in_dq if n not in act_in]
    assert len(out_q) == 1 and len(weight_dq) == 2  # the test model: one output pair, weight and bias DQs
    patched = be.patched_model(graph, _config([x]))
    before = {n.name for n in qm.graph.node}
    after = {n.name for n in patched.graph.node}
    removed = before - after
    out_dq = [c for c in cons[out_q[0].output[0]]]
    want = {out_q[0].name, *(n.name for n in out_dq), *(n.name for n in weight_dq)}
    want |= {n.name for n in own_in} | {c.name for n in own_in for c in qm.graph.node if c.output[0] == n.input[0]}
    assert removed == want
    # the output pair is an Identity now, X reads float activations and the float model's weights
    pnode = next(n for n in patched.graph.node if n.name == x)
    assert not any(i in {o for n in patched.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
                   for i in pnode.input)
    pinit = {t.name: numpy_helper.to_array(t) for t in patched.graph.initializer}
    finit = {t.name: numpy_helper.to_array(t) for t in make_float().graph.initializer}
    assert np.array_equal(pinit[pnode.input[1]], finit["w2"]) and np.array_equal(pinit[pnode.input[2]], finit["b2"])
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == node.output[0] for n in patched.graph.node)


def test_all_promoted_equals_float(models):
    d = models
    graph = ModelGraph.load(d / "f.onnx")
    be = QdqBackend(str(d / "q.onnx"), graph)
    keys = [op.key for op in be.quant_ops(graph) if op.quantizable]
    patched = be.patched_model(graph, _config(keys))
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in patched.graph.node)
    fl = run(make_float(), ["y"], samples())
    pq = run(patched, ["y"], samples())
    for f, p in zip(fl, pq, strict=True):
        np.testing.assert_allclose(p["y"], f["y"], rtol=1e-5, atol=1e-6)


def test_bisect_writes_patched_model(models, tmp_path, capsys):
    d = models
    out = tmp_path / "patched.onnx"
    rc, err = cli(["bisect", d / "f.onnx", "--quantized", d / "q.onnx", "--data", d / "data",
                   "--target", "y:snr_db>=45", "-o", out, "--json", tmp_path / "b.json", "-q"], capsys)
    assert rc in (0, 1), err
    doc = json.loads((tmp_path / "b.json").read_text())
    promoted = doc["result"]["set"]
    qm = onnx.load(str(d / "q.onnx"))
    if promoted:
        pm = onnx.load(str(out))
        nq = sum(n.op_type == "QuantizeLinear" for n in pm.graph.node)
        assert nq < sum(n.op_type == "QuantizeLinear" for n in qm.graph.node)
        assert doc["patched_file"]["changed"] == promoted
    rc, err = cli(["bisect", d / "f.onnx", "--quantized", d / "q.onnx", "--data", d / "data",
                   "--target", "y:snr_db>=45", "-o", d / "q.onnx", "-q"], capsys)
    assert rc == 2 and "q.onnx" in err
    assert onnx.load(str(d / "q.onnx")).SerializeToString() == qm.SerializeToString()


# ------------------------------------------------------------------ --quantized-dumps
SIGMA = 0.01


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """Float values of every tensor plus known noise, one folder per sample, files named by tensor."""
    d = tmp_path_factory.mktemp("dumps")
    fm = make_float()
    onnx.save(fm, str(d / "f.onnx"))
    (d / "data").mkdir()
    for i, s in enumerate(samples()):
        np.save(d / "data" / f"{i:04d}.npy", s)
    names = float_tensors(fm)[1:]
    fl = run(fm, names, samples())
    rng = np.random.default_rng(7)
    noisy = [{t: (v + rng.normal(0, SIGMA, v.shape)).astype(np.float32) for t, v in f.items()} for f in fl]
    for k, vals in enumerate(noisy):
        (d / "dumps" / f"{k:04d}").mkdir(parents=True)
        for t, v in vals.items():
            np.save(d / "dumps" / f"{k:04d}" / (t.replace("/", "_") + ".npy"), v)
    return d, fl, noisy


def test_dumps_snr(dumps, capsys):
    d, fl, noisy = dumps
    rc, err = cli(["compare", d / "f.onnx", "--quantized-dumps", d / "dumps", "--data", d / "data", "--json",
                   d / "c.json", "-q"], capsys)
    assert rc == 0, err
    r = rows(json.loads((d / "c.json").read_text()))
    for t in fl[0]:
        want = snr([(f[t], q[t]) for f, q in zip(fl, noisy, strict=True)])
        assert r[t]["cumulative"]["snr_db"] == pytest.approx(want, abs=1e-3), t
        assert r[t]["isolated"]["snr_db"] is None  # not available from dumps


def test_dumps_map_csv_and_nhwc(dumps, tmp_path, capsys):
    d, fl, noisy = dumps
    t1, t2 = "/c2/Mul_output_0", "/cat/Concat_output_0"
    (tmp_path / "s0").mkdir()
    np.save(tmp_path / "s0" / "a.npy", noisy[0][t1])
    np.save(tmp_path / "s0" / "b.npy", noisy[0][t2].transpose(0, 2, 3, 1))  # NHWC
    with open(tmp_path / "map.csv", "w", newline="") as f:
        csv.writer(f).writerows([["tensor", "file"], [t1, "a.npy"], [t2, "b.npy"]])
    out = tmp_path / "c.json"
    base = ["compare", d / "f.onnx", "--quantized-dumps", tmp_path / "s0", "--dump-map", tmp_path / "map.csv",
            "--data", d / "data", "--samples", "1", "--json", out, "-q"]
    rc, err = cli(base, capsys)  # without --dump-layout the NHWC dump is refused
    assert rc == 2 and f"'{t2}'" in err and "(1, 8, 8, 16)" in err and "(1, 16, 8, 8)" in err and not out.exists()
    rc, err = cli(base + ["--dump-layout", "nhwc"], capsys)
    assert rc == 0, err
    doc = json.loads(out.read_text())
    r = rows(doc)
    for t in (t1, t2):
        assert r[t]["cumulative"]["snr_db"] == pytest.approx(snr([(fl[0][t], noisy[0][t])]), abs=1e-3)
    assert r["/c1/Conv_output_0"]["cumulative"]["snr_db"] is None
    assert len([w for w in doc["warnings"] if "no dump" in w]) == 1


def test_dumps_map_json(dumps, tmp_path, capsys):
    d, fl, noisy = dumps
    t = "/add/Add_output_0"
    for k in range(N):
        (tmp_path / "dumps" / f"{k}").mkdir(parents=True)
        np.save(tmp_path / "dumps" / f"{k}" / "z.npy", noisy[k][t])
    (tmp_path / "m.json").write_text(json.dumps({t: "z.npy"}))
    rc, err = cli(["compare", d / "f.onnx", "--quantized-dumps", tmp_path / "dumps", "--dump-map", tmp_path / "m.json",
                   "--data", d / "data", "--json", tmp_path / "c.json", "-q"], capsys)
    assert rc == 0, err
    got = rows(json.loads((tmp_path / "c.json").read_text()))[t]["cumulative"]["snr_db"]
    assert got == pytest.approx(snr([(f[t], q[t]) for f, q in zip(fl, noisy, strict=True)]), abs=1e-3)


@pytest.mark.parametrize("case", ["missing", "shape", "count"])
def test_dumps_bad_inputs(dumps, tmp_path, case, capsys):
    import shutil

    d, _, _ = dumps
    bad = tmp_path / "dumps"
    shutil.copytree(d / "dumps", bad)
    name = "_c2_Mul_output_0.npy"
    if case == "missing":
        (bad / "0001" / name).unlink()
    elif case == "shape":
        np.save(bad / "0002" / name, np.zeros((1, 8, 4, 4), np.float32))
    else:
        shutil.rmtree(bad / "0002")
    out = tmp_path / "c.json"
    rc, err = cli(["compare", d / "f.onnx", "--quantized-dumps", bad, "--data", d / "data", "--json", out], capsys)
    assert rc == 2 and "fix:" in err and not out.exists()
    assert {"missing": "0001", "shape": "(1, 8, 4, 4)", "count": "2 dumped sample(s) but 3"}[case] in err
