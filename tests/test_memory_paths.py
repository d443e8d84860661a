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
    assert any(is_placeholder(t) for t in qlight_model.graph.initializer)
    qlight = OrtSession(qlight_model, weights=bert.weight)
    afull_model, iso_full = be.analysis_model(bert, cfg, exposed)
    alight_model, iso_light = be.analysis_model(bert, cfg, exposed, weightless=True)
    assert iso_full == iso_light
    afull, alight = OrtSession(afull_model), OrtSession(alight_model, weights=bert.weight)
    for f in _feeds():
        _same(qfull.run(f), qlight.run(f))
        _same(afull.run(f), alight.run(f))
