"""rknn-toolkit v1 customized_quantize_layers and the exports for other stacks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from onnx import TensorProto, helper

from fixtures.vendor import make_rknn1_layers, reference_samples, yolov8_bundle
from qdebug.errors import FormatError, QDebugError
from qdebug.formats.base import FORMATS, load_vendor_file
from qdebug.formats.exports import EXPORTERS, export_all
from qdebug.formats.rknn1 import Rknn1QuantizeLayers, acuity_key, match_node
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QuantConfig

TEXT = Path(__file__).resolve().parents[1] / "fixtures" / "text"
SAMPLES = reference_samples()
needs_samples = pytest.mark.skipif(SAMPLES is None, reason="../shared/reference/samples not present")


def _graph() -> ModelGraph:
    return ModelGraph(yolov8_bundle()[0])


def _old_style_graph() -> ModelGraph:
    """Nodes named like old torch exports (`Conv_434`), as in the v1 sample's keys."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="Conv_434", kernel_shape=[1, 1]),
             helper.make_node("Reshape", ["a", "s"], ["b"], name="Reshape_614"),
             helper.make_node("Gemm", ["b", "g"], ["y"], name="Gemm_615")]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [2, 2, 1, 1], [1.0, 0.0, 0.0, 1.0]),
             helper.make_tensor("s", TensorProto.INT64, [2], [1, 2]),
             helper.make_tensor("g", TensorProto.FLOAT, [2, 2], [1.0, 0.0, 0.0, 1.0])]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 1, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    return ModelGraph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


# ------------------------------------------------------------------ rknn1
@needs_samples
def test_rknn1_sample_roundtrip_and_mapping() -> None:
    path = SAMPLES / "rknn1" / "customized_quantize_layers.example.yaml"
    vf = load_vendor_file(str(path))
    assert isinstance(vf, Rknn1QuantizeLayers)
    assert vf.dumps().encode() == path.read_bytes()
    assert len(vf.layers) == 17 and set(vf.layers.values()) == {"dynamic_fixed_point-i16"}
    g = _old_style_graph()
    cfg, rep = vf.to_config(g, QuantConfig())
    assert cfg.overrides == {n: Precision.INT16 for n in ("Conv_434", "Reshape_614", "Gemm_615")}
    assert "Reshape_Reshape_614_2_acuity_mark_perm_157" in rep.matched
    assert "Conv_Conv_436_101" in rep.unmatched_records


def test_rknn1_match_node_and_acuity_key() -> None:
    g = _old_style_graph()
    assert match_node("Conv_Conv_434_104", g) == "Conv_434"
    assert match_node("Reshape_Reshape_614_2_acuity_mark_perm_157", g) == "Reshape_614"
    assert match_node("Conv_Conv_4345_1", g) is None and match_node("Gemm_Conv_434_1", g) is None
    assert acuity_key(g, "Gemm_615") == "Gemm_Gemm_615_1"  # the output layer is id 1, as in the sample
    assert acuity_key(g, "Reshape_614") == "Reshape_Reshape_614_2"


def test_rknn1_promote_own_fixture() -> None:
    g = _graph()
    model = yolov8_bundle()[0]
    text = make_rknn1_layers(model, ["/model.0/conv/Conv"])
    vf = Rknn1QuantizeLayers.parse(text, "q.yaml")
    assert vf.dumps() == text
    cfg, rep = vf.to_config(g, QuantConfig())
    assert cfg.overrides == {"/model.0/conv/Conv": Precision.INT16} and not rep.unmatched_records
    res = vf.promote(["/model.22/Mul_2"], Precision.INT16, graph=g)
    key = acuity_key(g, "/model.22/Mul_2")
    assert re.fullmatch(r"Mul_/model\.22/Mul_2_\d+", key)
    assert res.text == text + f"    {key}: dynamic_fixed_point-i16\n"
    assert res.changed == [key] and any("guessed" in n for n in res.notes)
    # an existing key is edited in place
    res2 = Rknn1QuantizeLayers.parse(res.text).promote(["/model.22/Mul_2"], Precision.FP16, graph=g)
    assert res2.text == res.text.replace(f"{key}: dynamic_fixed_point-i16", f"{key}: float32")
    empty = Rknn1QuantizeLayers.parse(make_rknn1_layers(model))
    assert yaml.safe_load(empty.promote(["/model.22/Mul_2"], Precision.INT16, graph=g).text) == {
        "customized_quantize_layers": {key: "dynamic_fixed_point-i16"}}


def test_rknn1_errors() -> None:
    vf = Rknn1QuantizeLayers.parse("customized_quantize_layers: {}\n", "q.yaml")
    with pytest.raises(FormatError, match="--model"):
        vf.promote(["/model.22/Mul_2"], Precision.INT16)
    with pytest.raises(FormatError, match="did you mean /model.22/Mul_2"):
        vf.promote(["/model.22/Mul2"], Precision.INT16, graph=_graph())
    path = TEXT / "rknn1_unknown_qtype.yaml"
    with pytest.raises(FormatError) as ei:
        load_vendor_file(f"rknn1:{path}")
    assert ei.value.where == "line 3" and "dynamic_fixed_point-i12" in ei.value.problem
    with pytest.raises(FormatError, match="missing `customized_quantize_layers`"):
        Rknn1QuantizeLayers.parse("a: 1\n")


def test_registry_has_all_formats() -> None:
    assert {"hisi", "rknn", "rknn2", "rknn1"} <= set(FORMATS)
    assert FORMATS["hisi"].profile == "hisi" and FORMATS["rknn"].profile == "rknn"


# ------------------------------------------------------------------ exports
def test_exports_for_other_stacks() -> None:
    g = _graph()
    nodes = ["/model.22/Mul_2", "/model.22/dfl/Softmax_output_0"]  # a tensor name maps to its producer
    out = export_all(g, nodes, Precision.INT16)
    assert set(out) == set(EXPORTERS) >= {"qtable", "horizon", "trt", "trtexec", "ort", "atc"}
    qt = out["qtable"].splitlines()
    assert qt[0].startswith("#") and qt[-2:] == ["/model.22/Mul_2_output_0_Mul F16",
                                                 "/model.22/dfl/Softmax_output_0_Softmax F16"]
    hz = yaml.safe_load(out["horizon"])["model_parameters"]["node_info"]
    assert hz == {n: {"ON": "BPU", "InputType": "int16", "OutputType": "int16"}
                  for n in ("/model.22/Mul_2", "/model.22/dfl/Softmax")}
    assert "--layer-precisions /model.22/Mul_2:float16,/model.22/dfl/Softmax:float16" in out["trt"]
    assert "--layerPrecisions=/model.22/Mul_2:fp16,/model.22/dfl/Softmax:fp16 --precisionConstraints=obey" in out["trtexec"]
    assert json.loads(out["ort"].split("=", 1)[1]) == ["/model.22/Mul_2", "/model.22/dfl/Softmax"]
    assert out["atc"].strip() == "--high_precision_layer=/model.22/Mul_2;/model.22/dfl/Softmax"
    assert yaml.safe_load(out["rknn"]) == {"custom_quantize_layers": {
        "/model.22/Mul_2_output_0": "int16", "/model.22/dfl/Softmax_output_0": "int16"}}
    fp = export_all(g, ["/model.22/Mul_2"], Precision.FP16, ["horizon", "trt", "qtable"])
    assert "'ON': 'CPU'" in fp["horizon"] and "no int16" not in fp["trt"]


def test_exports_errors_and_quoting() -> None:
    g = _graph()
    with pytest.raises(QDebugError, match="unknown export 'tflite'"):
        export_all(g, ["/model.22/Mul_2"], Precision.INT16, ["tflite"])
    with pytest.raises(QDebugError, match="did you mean /model.22/Mul_2"):
        export_all(g, ["/model.22/Mul2"], Precision.INT16, ["atc"])
    with pytest.raises(QDebugError, match="--model"):
        EXPORTERS["qtable"](None, ["a"], Precision.INT16)
    assert EXPORTERS["trtexec"](None, ["a b;c"], Precision.FP16).startswith("'--layerPrecisions=a b;c:fp16'")
