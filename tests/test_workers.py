"""The shared worker pool and what runs on it: ordered bounded map, session output slots, parallel
calibration and the pipelined compare loop (numbers must not depend on how work is spread)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import qdebug.workers as workers
from qdebug.compare.stage import run_compare
from qdebug.graph.model import ModelGraph
from qdebug.inputs.dataset import load_dataset
from qdebug.quant.calibrate import make_calibrator
from qdebug.quant.scheme import QuantConfig, QuantScheme
from qdebug.runners.session import OrtSession
from qdebug.runners.sim import SimBackend


def test_ordered_map_keeps_order_and_bounds_items_in_flight():
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def work(i: int) -> int:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.002 * ((7 * i) % 5))  # later items often finish first
        with lock:
            state["now"] -= 1
        return i * i

    got = list(workers.ordered_map(work, range(40), window=3))
    assert got == [i * i for i in range(40)]
    assert 1 <= state["peak"] <= 3


def test_ordered_map_raises_the_first_failure_in_input_order():
    def work(i: int) -> int:
        if i == 2:
            time.sleep(0.05)
            raise ValueError("item 2")
        if i == 3:
            raise KeyError("item 3")  # fails sooner, but comes later in the input
        return i

    seen = []
    with pytest.raises(ValueError, match="item 2"):
        for v in workers.ordered_map(work, range(10), window=4):
            seen.append(v)
    assert seen == [0, 1]


def _nonzero_model() -> onnx.ModelProto:
    """y = x * 2 (static shape) and idx = NonZero(x > 0) (shape depends on the data)."""
    nodes = [helper.make_node("Mul", ["x", "two"], ["y"]),
             helper.make_node("Greater", ["x", "zero"], ["pos"]),
             helper.make_node("NonZero", ["pos"], ["idx"])]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6]),
                           helper.make_tensor_value_info("idx", TensorProto.INT64, None)],
                          [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
                           helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_session_slots_reuse_their_arrays_and_match_plain_runs(fx):
    g = ModelGraph.load(fx["yolov8"])
    samples = list(load_dataset(fx["images"], g))[:3]
    sess = OrtSession(g.with_outputs(g.activation_tensors()))
    plain = [sess.run(s) for s in samples]
    first = sess.run(samples[0], slot=0)
    other = sess.run(samples[1], slot=1)
    again = sess.run(samples[2], slot=0)
    for got, want in ((other, plain[1]), (again, plain[2])):
        assert got.keys() == want.keys()
        assert all(np.array_equal(got[k], want[k]) for k in want)
    # slot 0 was written in place (no new arrays): the first dict now shows sample 2; slot 1 kept sample 1
    name = g.outputs[0].name
    assert np.shares_memory(first[name], again[name]) and np.array_equal(first[name], plain[2][name])
    assert not np.shares_memory(other[name], again[name])


def test_session_slot_falls_back_when_an_output_shape_follows_the_data():
    sess = OrtSession(_nonzero_model())
    xs = [np.array([[1, -1, 2, -2, 3, -3]], np.float32), np.array([[1, 1, 1, -1, 1, 1]], np.float32),
          np.array([[-1, -1, -1, -1, -1, 5]], np.float32)]
    for x in xs:
        got = sess.run({"x": x}, slot=0)
        np.testing.assert_array_equal(got["y"], x * 2)
        np.testing.assert_array_equal(got["idx"], np.array(np.nonzero(x > 0)))


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_parallel_calibration_equals_a_sequential_one(fx, method):
    """Samples are calibrated side by side; the ranges must equal feeding one calibrator in order."""
    g = ModelGraph.load(fx["yolov8"])
    ds = load_dataset(fx["images"], g)
    be = SimBackend("generic")
    cfg = QuantConfig(scheme=QuantScheme(calibrator=method))
    be.prepare(g, cfg, ds)
    tensors = be.calibration_tensors(g)
    sess = OrtSession(g.with_outputs([t for t in tensors if t in g.producer]))
    cal = make_calibrator(method)
    for pass_idx in range(cal.passes):
        for s in ds:
            vals = {**sess.run(s), **s}
            for t in tensors:
                if t in vals and np.issubdtype(vals[t].dtype, np.floating):
                    cal.observe(pass_idx, t, vals[t])
    want = cal.ranges(8)
    assert be.ranges.keys() == want.keys()
    for t, (lo, hi) in want.items():
        # the calibration session fuses ops (ORT_ENABLE_ALL): equal to float32 rounding
        assert be.ranges[t] == pytest.approx((lo, hi), rel=1e-5, abs=1e-6), t


def test_compare_numbers_do_not_depend_on_the_number_of_workers(fx, monkeypatch):
    g = ModelGraph.load(fx["yolov8"])
    ds = load_dataset(fx["images"], g)
    runs = []
    for n in (1, 3):
        monkeypatch.setattr(workers, "_POOL", ThreadPoolExecutor(max_workers=n))
        d = run_compare(g, ds, QuantConfig(), SimBackend("generic")).to_json()
        runs.append((d["tensors"], d["parts"], d["outputs"], d["quant"]))
        workers._POOL.shutdown()
    assert runs[0] == runs[1]


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_truncated_graph_calibration_equals_a_sequential_one(fx, method):
    """A truncated graph exposes quantization points the full graph fused away (here a Conv output inside
    Conv+SiLU); ensure_ranges calibrates them on the same samples, side by side, and must give what one
    calibrator fed in order over the same (ORT_ENABLE_BASIC) session gives."""
    g = ModelGraph.load(fx["yolov8"])
    ds = load_dataset(fx["images"], g)
    be = SimBackend("generic")
    cfg = QuantConfig(scheme=QuantScheme(calibrator=method))
    be.prepare(g, cfg, ds)
    convs = [n.output[0] for n in g.nodes if n.op_type == "Conv" and g.consumers[n.output[0]][0].op_type == "Sigmoid"]
    cuts = [convs[1], convs[-1]]
    assert not any(c in be.ranges for c in cuts)  # inside fused groups of the full graph
    tg = g.truncate(cuts)
    before = dict(be.ranges)
    be.plan(tg, cfg)  # calls ensure_ranges
    new = [t for t in be.ranges if t not in before]
    assert set(cuts) <= set(new)
    assert set(new) == {t for t in be.calibration_tensors(tg) if t not in before and t in tg.producer}
    assert all(be.ranges[t] == before[t] for t in before)  # known ranges are left alone
    sess = OrtSession(tg.with_outputs(new))
    cal = make_calibrator(method)
    for pass_idx in range(cal.passes):
        for s in ds:
            vals = sess.run(s)
            for t in new:
                cal.observe(pass_idx, t, vals[t])
    want = cal.ranges(8)
    assert {t: be.ranges[t] for t in new} == want
