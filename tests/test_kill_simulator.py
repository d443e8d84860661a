"""Mutation-audit kills for the simulator plan, the fusion passthrough rule and the hazard thresholds.

Every expected value is computed here with plain numpy (no qdebug helpers) or derived by hand.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdebug.graph.fusion import build_quant_ops
from qdebug.graph.hazards import find_hazards
from qdebug.graph.model import ModelGraph
from qdebug.quant.profiles import get_profile
from qdebug.quant.scheme import Precision, QParams, QuantConfig
from qdebug.quant.simulate import op_precision, plan


def _graph(nodes, inits, x_shape, y_shape, extra_outputs=()) -> ModelGraph:
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))]
    outs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in extra_outputs]
    g = helper.make_graph(nodes, "k", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))], outs,
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return ModelGraph(m, "k.onnx")


def _sym_int8_per_channel(w: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric int8 fake quantization with one scale per slice along `axis` (q in [-127, 127])."""
    w64 = w.astype(np.float64)
    red = tuple(i for i in range(w.ndim) if i != axis)
    step = np.abs(w64).max(axis=red, keepdims=True) / 127.0
    return (np.clip(np.round(w64 / step), -127, 127) * step).astype(np.float32)


def _weights_of(g: ModelGraph) -> dict[str, np.ndarray]:
    ops = build_quant_ops(g, fuse=True)
    return plan(g, ops, get_profile("generic"), QuantConfig(), {}).weights


def _spread_weight(shape: tuple[int, int], axis: int) -> np.ndarray:
    """A weight whose slices along `axis` differ by factors of 100, so the channel axis matters."""
    rng = np.random.default_rng(3)
    w = rng.uniform(0.2, 1.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    mags = np.array([0.01, 1.0, 100.0])[: shape[axis]]
    return (w * (mags[:, None] if axis == 0 else mags[None, :])).astype(np.float32)


def test_gemm_transb_weight_is_quantized_per_row():
    # Gemm with transB=1: W is [N, K], output channel n is row n
    w = _spread_weight((3, 4), axis=0)
    g = _graph([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], {"w": w}, (1, 4), (1, 3))
    got = _weights_of(g)["fc"]
    np.testing.assert_allclose(got, _sym_int8_per_channel(w, 0), rtol=1e-6, atol=0)
    assert np.all(got[0] != 0)  # the small row keeps its own scale (per column it would round to 0)


def test_gemm_without_transb_weight_is_quantized_per_column():
    # Gemm with transB=0: W is [K, N], output channel n is column n
    w = _spread_weight((4, 3), axis=1)
    g = _graph([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=0)], {"w": w}, (1, 4), (1, 3))
    got = _weights_of(g)["fc"]
    np.testing.assert_allclose(got, _sym_int8_per_channel(w, 1), rtol=1e-6, atol=0)
    assert np.all(got[:, 0] != 0)


def test_matmul_constant_weight_is_quantized_per_output_column():
    # MatMul x[1,4] @ W[4,3]: output channels are W's last axis
    w = _spread_weight((4, 3), axis=1)
    g = _graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], {"w": w}, (1, 4), (1, 3))
    got = _weights_of(g)["mm"]
    np.testing.assert_allclose(got, _sym_int8_per_channel(w, 1), rtol=1e-6, atol=0)
    # hand check of one element: column 1 has amax = max|w[:,1]|, step = amax/127
    step = float(np.abs(w[:, 1].astype(np.float64)).max()) / 127.0
    assert abs(float(got[2, 1]) - round(float(w[2, 1]) / step) * step) < 1e-6


def _conv_pool() -> ModelGraph:
    w = np.ones((2, 2, 1, 1), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("MaxPool", ["c"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])]
    return _graph(nodes, {"w": w}, (1, 2, 4, 4), (1, 2, 2, 2))


def test_maxpool_passes_its_input_quantization_through():
    g = _conv_pool()
    ops = {op.key: op for op in build_quant_ops(g, fuse=True)}
    assert ops["pool"].kind == "passthrough"
    assert not ops["pool"].quantizable
    sp = plan(g, list(ops.values()), get_profile("generic"), QuantConfig(), {"x": (-1.0, 1.0), "c": (-2.0, 2.0),
                                                                             "y": (-2.0, 2.0)})
    # quantization points: the input and the conv output; none of MaxPool's own, nothing left in float
    assert set(sp.act) == {"x", "c"}
    assert sp.unsupported == []


def _hazard_graph() -> ModelGraph:
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
             helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Concat", ["s", "r"], ["cat"], name="cat", axis=1),
             helper.make_node("Mul", ["cat", "k5"], ["m5"], name="mul5"),
             helper.make_node("Mul", ["m5", "k3"], ["y"], name="mul3")]
    inits = {"k5": np.array(5.0, np.float32), "k3": np.array(3.0, np.float32)}
    return _graph(nodes, inits, (1, 2), (1, 4))


def test_hazard_thresholds_concat_ratio_16_and_scale_4():
    g = _hazard_graph()
    # sigmoid in [0, 1] next to data in [0, 20]: 20x narrower, over the 16x threshold
    ranges = {"x": (-20.0, 20.0), "s": (0.0, 1.0), "r": (0.0, 20.0), "cat": (0.0, 20.0), "m5": (0.0, 100.0),
              "y": (0.0, 300.0)}
    hz = find_hazards(g, ranges)
    kinds = sorted((h.kind, h.node, h.tensor) for h in hz)
    assert kinds == [("scale_amplify", "mul5", "m5"), ("score_concat", "cat", "s")]
    sc = next(h for h in hz if h.kind == "score_concat")
    assert abs(sc.numbers["int8_step"] - 20.0 / 255) < 1e-12
    assert abs(sc.numbers["levels_left"] - 12.75) < 1e-9  # 1 / (20/255)
    sa = next(h for h in hz if h.kind == "scale_amplify")
    assert sa.numbers["factor"] == 5.0
    assert abs(sa.numbers["output_error_bound"] - (20.0 / 255) * 5 / 2) < 1e-12


def test_hazard_thresholds_not_reached():
    g = _hazard_graph()
    # 10x narrower (under 16x); the x5 scale stays flagged, the x3 one never is
    ranges = {"x": (-10.0, 10.0), "s": (0.0, 1.0), "r": (0.0, 10.0), "cat": (0.0, 10.0), "m5": (0.0, 50.0),
              "y": (0.0, 150.0)}
    hz = find_hazards(g, ranges)
    assert [(h.kind, h.node) for h in hz] == [("scale_amplify", "mul5")]
    # exactly 16x: w * 16 >= width is not a hazard
    ranges.update({"r": (0.0, 16.0), "cat": (0.0, 16.0)})
    assert [h.kind for h in find_hazards(g, ranges)] == ["scale_amplify"]


def _conv_bn_relu() -> ModelGraph:
    c = np.ones(2, np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["y"], name="relu")]
    inits = {"w": np.ones((2, 2, 1, 1), np.float32), "g": c, "b": 0 * c, "m": 0 * c, "v": c}
    return _graph(nodes, inits, (1, 2, 2, 2), (1, 2, 2, 2))


def test_conv_bn_relu_is_one_group():
    ops = [op for op in build_quant_ops(_conv_bn_relu(), fuse=True) if op.kind == "compute"]
    assert [(op.key, op.nodes, op.op_type, op.outputs) for op in ops] == [
        ("conv", ["conv", "bn", "relu"], "Conv+BN+Relu", ["y"])]


def test_group_precision_is_the_most_faithful_override():
    g = _conv_bn_relu()
    ops = build_quant_ops(g, fuse=True)
    cfg = QuantConfig(overrides={"conv": Precision.INT16, "relu": Precision.FP16})
    op = next(o for o in ops if o.key == "conv")
    assert op_precision(op, cfg) == Precision.FP16
    sp = plan(g, ops, get_profile("generic"), cfg, {})
    assert sp.precision["conv"] == Precision.FP16 and "y" not in sp.act  # float16: no integer quantizer


def test_pinned_8bit_record_is_widened_for_an_int16_op():
    g = _conv_bn_relu()
    ops = build_quant_ops(g, fuse=True)
    rec = QParams(np.array([0.1]), np.array([0]), -128, 127)  # represents [-12.8, 12.7]
    cfg = QuantConfig(overrides={"conv": Precision.INT16}, act_params={"y": rec})
    got = plan(g, ops, get_profile("generic"), cfg, {}).act["y"]
    assert (got.qmin, got.qmax) == (-32767, 32767)  # zero point 0, full int8 range: widened symmetric
    # the same range [-12.8, 12.8] on 16-bit steps: step 12.8 / 32767
    assert float(got.scale[0]) == pytest.approx(12.8 / 32767, rel=1e-12)
    assert int(got.zero_point[0]) == 0
    cfg8 = QuantConfig(act_params={"y": rec})
    assert plan(g, ops, get_profile("generic"), cfg8, {}).act["y"] is rec  # an int8 op keeps the record
