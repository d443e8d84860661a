"""The simulator graph against an independent numpy re-implementation, and the fusion rules."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdebug.graph.fusion import build_quant_ops
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QuantConfig, QuantScheme, fake_quant, params_from_range
from qdebug.runners.sim import SimBackend


def _model(nodes, inits, out_shape, in_shape=(1, 2, 4, 4)):
    g = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return ModelGraph(m, "t.onnx")


def _conv_relu():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 2, 1, 1)).astype(np.float32)
    b = np.array([0.1, -0.2, 0.3], dtype=np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    return _model(nodes, {"w": w, "b": b}, (1, 3, 4, 4)), w, b


def _np_conv1x1(x, w, b):
    return np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None]


def test_conv_relu_matches_numpy_reference():
    g, w, b = _conv_relu()
    rng = np.random.default_rng(1)
    samples = [{"x": rng.uniform(-1, 1, size=(1, 2, 4, 4)).astype(np.float32)} for _ in range(3)]
    be = SimBackend("generic")
    cfg = QuantConfig()
    be.prepare(g, cfg, samples)
    out = next(be.run(g, cfg, [samples[0]], ["y"]))["y"]
    # independent reference: input int8 asym on its calibrated range, weights int8 symmetric per channel,
    # Conv+Relu fused, output int8 asym on the calibrated output range
    xs = np.concatenate([s["x"] for s in samples])
    px = params_from_range(xs.min(), xs.max(), 8, symmetric=False)
    pw = params_from_range(w.min(axis=(1, 2, 3)), w.max(axis=(1, 2, 3)), 8, symmetric=True, axis=0)
    ys = np.maximum(_np_conv1x1(xs, w, b), 0)
    py = params_from_range(ys.min(), ys.max(), 8, symmetric=False)
    xq = fake_quant(samples[0]["x"], px)
    ref = fake_quant(np.maximum(_np_conv1x1(xq, fake_quant(w, pw), b), 0).astype(np.float32), py)
    np.testing.assert_allclose(out, ref, atol=float(py.scale[0]) * 1.01)
    assert np.mean(np.isclose(out, ref, atol=1e-5)) > 0.95
    # and the quantized output lies on the int8 grid of the output range
    steps = (out - (py.qmin - py.zero_point[0]) * py.scale[0]) / py.scale[0]
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)


def test_fusion_groups_conv_silu_and_passthrough():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 2, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="/m/conv/Conv"),
             helper.make_node("Mul", ["c", "k"], ["cm"], name="/m/Mul_const"),
             helper.make_node("Sigmoid", ["cm"], ["s"], name="/m/act/Sigmoid"),
             helper.make_node("Mul", ["cm", "s"], ["a"], name="/m/act/Mul"),
             helper.make_node("Reshape", ["a", "shape"], ["r"], name="/m/Reshape"),
             helper.make_node("Sigmoid", ["r"], ["y"], name="/m/out/Sigmoid")]
    g = _model(nodes, {"w": w, "k": np.array(2.0, dtype=np.float32), "shape": np.array([1, -1], dtype=np.int64)},
               (1, 32))
    ops = {op.key: op for op in build_quant_ops(g, fuse=True)}
    assert ops["/m/conv/Conv"].nodes == ["/m/conv/Conv", "/m/Mul_const", "/m/act/Sigmoid", "/m/act/Mul"]
    assert ops["/m/conv/Conv"].op_type == "Conv+Mul(const)+SiLU"
    assert ops["/m/Reshape"].kind == "passthrough"
    assert ops["/m/out/Sigmoid"].kind == "compute"
    unfused = {op.key for op in build_quant_ops(g, fuse=False)}
    assert {"/m/act/Sigmoid", "/m/act/Mul", "/m/Mul_const"} <= unfused


def test_int16_override_and_fp32_reduce_error():
    g, _, _ = _conv_relu()
    rng = np.random.default_rng(2)
    samples = [{"x": rng.uniform(-1, 1, size=(1, 2, 4, 4)).astype(np.float32)} for _ in range(4)]
    be = SimBackend("generic")
    be.prepare(g, QuantConfig(), samples)
    fsess_out = [be.run(g, QuantConfig(scheme=QuantScheme(activation=Precision.INT8)), [s], ["y"]) for s in samples]
    ref = [next(be.run(g, QuantConfig(overrides={"conv": Precision.FP32, "x": Precision.FP32}), [s], ["y"]))["y"]
           for s in samples]
    e8 = sum(float(np.abs(next(o)["y"] - r).max()) for o, r in zip(fsess_out, ref, strict=True))
    e16 = sum(float(np.abs(next(be.run(g, QuantConfig(overrides={"conv": Precision.INT16, "x": Precision.INT16}),
                                         [s], ["y"]))["y"] - r).max()) for s, r in zip(samples, ref, strict=True))
    assert e16 < e8 / 50
    # fp32 on every op reproduces the float model exactly
    from qdebug.runners.session import OrtSession

    fl = OrtSession(g.model).run(samples[0])["y"]
    np.testing.assert_array_equal(ref[0], fl)


def test_hisi_profile_quantizes_inputs_and_computes_fp16():
    nodes = [helper.make_node("Mul", ["x", "k"], ["y"], name="/model.22/Mul_2")]
    g = _model(nodes, {"k": np.array(32.0, dtype=np.float32)}, (1, 2, 4, 4))
    x = np.linspace(0, 24, 32, dtype=np.float32).reshape(1, 2, 4, 4)
    be = SimBackend("hisi")
    cfg = QuantConfig(scheme=QuantScheme(profile="hisi"))
    be.prepare(g, cfg, [{"x": x}])
    out = next(be.run(g, cfg, [{"x": x}], ["y"]))["y"]
    p = params_from_range(0.0, 24.0, 8, symmetric=False)
    ref = (fake_quant(x, p) * 32).astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(out, ref, rtol=1e-3)
    assert np.abs(out - x * 32).max() == pytest.approx(p.scale[0] / 2 * 32, rel=0.05)


def test_truncate_keeps_only_needed_nodes():
    g, _, _ = _conv_relu()
    t = g.truncate(["c"])
    assert [n.name for n in t.nodes] == ["conv"] and t.outputs[0].name == "c"


def test_fp16_override_rounds_to_half_precision():
    """The Cast round trip survives onnxruntime's optimizers: fp16 ops really produce float16 values."""
    g, _, _ = _conv_relu()
    rng = np.random.default_rng(5)
    samples = [{"x": rng.uniform(-1, 1, size=(1, 2, 4, 4)).astype(np.float32)}]
    be = SimBackend("generic")
    be.prepare(g, QuantConfig(), samples)
    cfg = QuantConfig(overrides={"conv": Precision.FP16, "x": Precision.FP32})
    out = next(be.run(g, cfg, samples, ["y"]))["y"]
    np.testing.assert_array_equal(out, out.astype(np.float16).astype(np.float32))
    from qdebug.runners.session import OrtSession

    ref = OrtSession(g.model).run(samples[0])["y"]
    assert not np.array_equal(out, ref) and np.allclose(out, ref, rtol=1e-3, atol=1e-3)
