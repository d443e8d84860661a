"""The model hash of a compare result is the sha256 of the serialized model (what ties a JSON to its model)."""

from __future__ import annotations

import hashlib

import onnx
import pytest

from fixtures.families import make_bert_layer, write_bert_data
from qdebug.compare import stage
from qdebug.graph.model import ModelGraph
from qdebug.inputs.dataset import load_dataset
from qdebug.quant.scheme import QuantConfig
from qdebug.runners.sim import SimBackend


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> tuple[ModelGraph, object]:
    d = tmp_path_factory.mktemp("m")
    onnx.save(make_bert_layer(), str(d / "bert.onnx"))
    return ModelGraph.load(d / "bert.onnx"), write_bert_data(d / "data", 2)


def test_compare_hash_is_the_serialized_model_sha256(bert):
    g, data = bert
    res = stage.run_compare(g, load_dataset(data, g), QuantConfig(), SimBackend("generic"), engine="arrays")
    assert res.model.sha256 == hashlib.sha256(g.model.SerializeToString()).hexdigest()

