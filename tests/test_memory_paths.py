"""The memory-saving paths (issue 15, BERT-base size) give exactly the numbers of the plain in-memory paths."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fixtures.families import make_bert_layer
from qdebug.errors import ModelError
from qdebug.graph.model import ModelGraph, is_placeholder, weightless
from qdebug.quant.scheme import QuantConfig
from qdebug.runners.session import OrtSession
from qdebug.runners.sim import SimBackend


def _feeds(n: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [{"input_ids": rng.integers(0, 100, (1, 16)).astype(np.int64),
             "attention_mask": np.ones((1, 16), np.int64),
             "token_type_ids": np.zeros((1, 16), np.int64)} for _ in range(n)]


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> ModelGraph:
    p = tmp_path_factory.mktemp("m") / "bert.onnx"
    onnx.save(make_bert_layer(), str(p))
    return ModelGraph.load(p)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k  # bit for bit


def test_weightless_keeps_shapes_and_drops_bytes(bert):
    light = weightless(bert.model)
    held = [t for t in light.graph.initializer if is_placeholder(t)]
    assert held and all(not t.raw_data for t in held)
    dropped = sum(len(bert.initializers[t.name].raw_data) for t in held)
    # none of their bytes left (a placeholder costs its name, dims and location: under 100 bytes)
    assert light.ByteSize() <= bert.model.ByteSize() - dropped + 100 * len(held)
    # shape inference on the full model, computed here, gives the shapes the graph took from the light copy
    full = onnx.shape_inference.infer_shapes(bert.model, strict_mode=False, data_prop=True)
    for vi in full.graph.value_info:
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in vi.type.tensor_type.shape.dim)
        assert bert.shapes[vi.name] == dims, vi.name
        assert bert.elem_types[vi.name] == vi.type.tensor_type.elem_type


def test_checker_still_sees_truncated_weights(tmp_path):
    m = make_bert_layer()
    big = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    big.raw_data = big.raw_data[:-4]  # one element short: the checker's size rule must still fire
    p = tmp_path / "bad.onnx"
    onnx.save(m, str(p))
    with pytest.raises(ModelError, match="checker"):
        ModelGraph.load(p)


def test_large_constants_not_cached_but_equal(bert):
    name = max(bert.initializers, key=lambda n: len(bert.initializers[n].raw_data))
    want = numpy_helper.to_array(bert.initializers[name])
    assert np.array_equal(bert.const_value(name), want)
    assert np.array_equal(bert.weight(name), want)


def test_side_file_session_equals_in_memory_session(bert):
    names = bert.activation_tensors()
    plain = OrtSession(bert.with_outputs(names))
    mapped = OrtSession(bert.with_outputs(names, bert.light_view().model), weights=bert.weight)
    assert mapped._tmp is not None
    for f in _feeds():
        _same(plain.run(f), mapped.run(f))


def test_placeholder_without_weights_is_an_error(bert):
    with pytest.raises(ModelError, match="no weights"):
        OrtSession(bert.light_view().model, weights=lambda name: None)


def test_weightless_simulator_models_equal_full_models(bert):
    be = SimBackend("generic")
    cfg = QuantConfig()
    be.prepare(bert, cfg, _feeds(3))
    exposed = bert.activation_tensors()
    qfull = OrtSession(be.quantized_model(bert, cfg, exposed))
    qlight_model = be.quantized_model(bert, cfg, exposed, weightless=True)
    # both the float weights and the plan's fake-quantized ones are placeholders: no initializer holds the
    # bytes of a weight of 4 KB or more
    held = [t for t in qlight_model.graph.initializer if is_placeholder(t)]
    assert any(t.name in bert.initializers for t in held) and any(t.name.startswith("qdebug::c") for t in held)
    assert all(len(t.raw_data) < 4096 for t in qlight_model.graph.initializer)
    wp = be.weights(bert, cfg)
    qlight = OrtSession(qlight_model, weights=wp)
    afull_model, iso_full = be.analysis_model(bert, cfg, exposed)
    alight_model, iso_light = be.analysis_model(bert, cfg, exposed, weightless=True)
    assert iso_full == iso_light
    assert all(len(t.raw_data) < 4096 for t in alight_model.graph.initializer)
    afull, alight = OrtSession(afull_model), OrtSession(alight_model, weights=wp)
    for f in _feeds():
        _same(qfull.run(f), qlight.run(f))
        _same(afull.run(f), alight.run(f))


def test_plan_placeholders_are_the_plan_arrays(bert):
    """Each fake-quantized placeholder of a weightless model resolves to the plan's own array (no copy), and
    the full model's initializer of the same name holds exactly those bytes."""
    be = SimBackend("generic")
    cfg = QuantConfig()
    be.prepare(bert, cfg, _feeds(2))
    full = {t.name: t for t in be.quantized_model(bert, cfg).graph.initializer}
    light = be.quantized_model(bert, cfg, weightless=True)
    wp, sp = be.weights(bert, cfg), be.plan(bert, cfg)
    held = [t for t in light.graph.initializer if is_placeholder(t) and t.name.startswith("qdebug::c")]
    assert held
    for t in held:
        a = wp(t.name)
        assert any(a is w for w in sp.weights.values()) or any(
            a is v for slots in sp.const_inputs.values() for v in slots.values())
        assert a.tobytes() == full[t.name].raw_data and tuple(a.shape) == tuple(t.dims)


def test_prune_keeps_initializers_in_place():
    """_prune drops unread initializers without rebuilding the list (no second copy of the kept ones)."""
    from onnx import TensorProto, helper

    from qdebug.quant.simulate import _prune

    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    unused = numpy_helper.from_array(np.ones(3, np.float32), "unused")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["x"], ["z"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [unused, w])
    m = _prune(helper.make_model(g))
    assert [n.op_type for n in m.graph.node] == ["MatMul"]
    assert [t.name for t in m.graph.initializer] == ["w"]
    assert np.array_equal(numpy_helper.to_array(m.graph.initializer[0]), np.arange(6, dtype=np.float32).reshape(2, 3))


def test_spilled_plan_weights_are_the_same_bytes(bert):
    """spill_weights maps the plan's weights from a file: equal arrays, no longer owned by the process's heap,
    and a session built afterwards gives the outputs of one built before."""
    be = SimBackend("generic")
    cfg = QuantConfig()
    be.prepare(bert, cfg, _feeds(2))
    exposed = bert.activation_tensors()
    before = OrtSession(be.quantized_model(bert, cfg, exposed, weightless=True), weights=be.weights(bert, cfg))
    sp = be.plan(bert, cfg)
    kept = {k: a.copy() for k, a in sp.weights.items()}
    be.spill_weights(bert, cfg)
    assert any(not a.flags.owndata for a in sp.weights.values())
    for k, a in sp.weights.items():
        assert a.dtype == kept[k].dtype and a.tobytes() == kept[k].tobytes(), k
    after = OrtSession(be.quantized_model(bert, cfg, exposed, weightless=True), weights=be.weights(bert, cfg))
    for f in _feeds():
        _same(before.run(f), after.run(f))


@pytest.mark.parametrize("which", ["bert", "yolov8"])
def test_split_loop_gives_the_parallel_loop_numbers(which, bert, fx, tmp_path, monkeypatch):
    """The array loop in halves (isolated values dropped before the cumulative run) adds exactly the sums of
    the loop holding both runs: padded BERT samples (masked scores) and a YOLOv8 head (Concat parts)."""
    from fixtures.families import write_bert_data
    from qdebug.compare import stage
    from qdebug.inputs.dataset import load_dataset

    g = bert if which == "bert" else ModelGraph.load(fx["yolov8"])
    data = write_bert_data(tmp_path / "d", 3) if which == "bert" else fx["images"]
    docs = []
    for limit in (0, 1 << 62):  # every sample in halves / only the first
        monkeypatch.setattr(stage, "SPLIT_BYTES", limit)
        res = stage.run_compare(g, load_dataset(data, g), QuantConfig(), SimBackend("generic"), engine="arrays")
        docs.append(res.to_json())
    a, b = docs
    assert a["tensors"] and any(t["isolated"]["snr_db"] is not None for t in a["tensors"])
    assert (a["tensors"], a["parts"], a["outputs"], a["warnings"]) == (b["tensors"], b["parts"], b["outputs"],
                                                                       b["warnings"])
    if which == "yolov8":
        assert a["parts"]


def test_shared_weight_file_writes_each_array_once(bert):
    """Sessions given one WeightFile share its side file: each float weight (by name) and each plan array (by
    identity) is written once, and the sessions give the outputs of sessions with their own side files."""
    import os

    from qdebug.runners.session import WeightFile

    be = SimBackend("generic")
    cfg = QuantConfig()
    be.prepare(bert, cfg, _feeds(2))
    exposed = bert.activation_tensors()
    wp = be.weights(bert, cfg)
    am, _ = be.analysis_model(bert, cfg, exposed, weightless=True)
    qm = be.quantized_model(bert, cfg, exposed, weightless=True)
    store = WeightFile()
    shared = [OrtSession(m, weights=wp, store=store) for m in (am, qm)]
    alone = [OrtSession(m, weights=wp) for m in (am, qm)]
    for f in _feeds():
        for s, a in zip(shared, alone, strict=True):
            _same(s.run(f), a.run(f))
    held = {t.name for m in (am, qm) for t in m.graph.initializer if is_placeholder(t)}
    distinct = {(id(wp(n)) if n.startswith("qdebug::c") else n): wp(n).nbytes for n in held}
    size = os.path.getsize(os.path.join(store.folder, "weights.bin"))
    assert sum(distinct.values()) <= size < sum(distinct.values()) + 4096 * len(distinct)
    plan_array = next(wp(n) for n in held if n.startswith("qdebug::c"))
    assert store.mapped(plan_array).tobytes() == plan_array.tobytes()
    # a float weight comes as a fresh array at every request: found again by its name, not written twice
    name = next(n for n in held if n in bert.initializers)
    assert store.place(name, wp(name).copy()) == store.place(name, wp(name).copy())
    # a plan array under another emitter name (models number their constants apart): found by identity
    assert store.place("qdebug::c0::w::other", plan_array) == store.place("qdebug::c1::w::other", plan_array)
    assert os.path.getsize(os.path.join(store.folder, "weights.bin")) == size
