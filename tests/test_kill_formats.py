"""Mutation-audit kills for the vendor formats: HiSilicon 16-bit derivation and fp16 promotion, rknn2 `X` vs
`X-rs` keys and the graph-output entry, custom entries never lowering a record, export precision words.

The rknn2 files are hand-written `.quantization.cfg` texts (no toolkit needed); patched files are read back
with PyYAML, not with qdebug's reader.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from qdebug.formats.exports import export_all
from qdebug.formats.hisi import HisiCalibration, widen_record
from qdebug.formats.rknn2 import RknnQuantCfg
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QuantConfig


# ----------------------------------------------------------------------------------------------- HiSilicon
def test_widen_record_hand_derived():
    # S8 [-128, 127] -> S16 [-32768, 32767]: r = 65535 / 255 = 257, q16 = 257 (q + 128) - 32768
    assert widen_record("S8", 25.5, 0) == ("S16", 25.5 * 257, 128)
    assert widen_record("S8", 2.0, -128) == ("S16", 2.0 * 257, -32768)
    assert widen_record("S8", 2.0, 127) == ("S16", 2.0 * 257, 32767)
    # U8 image record: offset -128 (shift into the signed domain) becomes -32768; 0 stays 0
    assert widen_record("U8", 256.0, -128) == ("U16", 256.0 * 257, -32768)
    assert widen_record("U8", 256.0, 0) == ("U16", 256.0 * 257, 0)


HISI = """version: 65536
layer {
  name: "img"
  calc_data_type: S8
  quant_param {
    input {
      data_type: U8
      scale: 256
      offset: -128
    }
  }
}
layer {
  name: "mid"
  calc_data_type: S8
  quant_param {
    input {
      data_type: S8
      scale: 10
      offset: 3
    }
  }
}
layer {
  name: "head"
  calc_data_type: F32
  quant_param {
    input {
      data_type: F32
      scale: 1
    }
  }
}
"""


def _record(text: str, name: str) -> str:
    start = text.index(f'name: "{name}"')
    return text[start:text.index("\n}", start)]


def test_hisi_int16_promotion_of_u8_and_s8_records():
    vf = HisiCalibration.parse(HISI, "calib.txt")
    res = vf.promote(["img", "mid"], Precision.INT16)
    img, mid = _record(res.text, "img"), _record(res.text, "mid")
    assert "data_type: U16" in img and "offset: -32768" in img and "scale: 65792" in img
    assert "calc_data_type: S16" in img
    # S8 offset 3: 257 * (3 + 128) - 32768 = 899; scale 10 * 257 = 2570
    assert "data_type: S16" in mid and "offset: 899" in mid and "scale: 2570" in mid
    assert _record(res.text, "head") == _record(HISI, "head")
    assert sorted(res.changed) == ["img", "mid"]


def test_hisi_fp16_promotion_never_lowers_f32_records():
    vf = HisiCalibration.parse(HISI, "calib.txt")
    res = vf.promote(["mid", "head"], Precision.FP16)
    assert _record(res.text, "head") == _record(HISI, "head")  # F32 stays F32
    mid = _record(res.text, "mid")
    assert "calc_data_type: F16" in mid and "data_type: F16" in mid and "scale: 10" in mid
    assert res.changed == ["mid"]
    assert any("head" in n and "unchanged" in n for n in res.notes)


# ----------------------------------------------------------------------------------------------- rknn2
def _rknn_graph() -> ModelGraph:
    """x -> conv1 -> a -> relu1 -> b -> conv2 -> y (graph output); rknn fuses conv1+relu1 (output b)."""
    w = np.ones((2, 2, 1, 1), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="conv1"),
             helper.make_node("Relu", ["a"], ["b"], name="relu1"),
             helper.make_node("Conv", ["b", "w"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return ModelGraph(m, "r.onnx")


def _entry(name: str, dtype: str, scale: float | None, zp: int | None) -> str:
    s = f"[{scale}]" if scale is not None else "[]"
    z = f"[{zp}]" if zp is not None else "[]"
    return f"    {name}:\n        qtype: asym\n        qmethod: layer\n        dtype: {dtype}\n" \
           f"        scale: {s}\n        zero_point: {z}\n"


def _cfg(*entries: str, custom: str = "{}") -> str:
    return f"custom_quantize_layers: {custom}\nquantize_parameters:\n" + "".join(entries)


RKNN_TEXT = _cfg(_entry("x", "float32", None, None), _entry("x_int8", "int8", 0.0078, 0),
                 _entry("b", "int8", 0.02, -128), _entry("b-rs", "int8", 0.02, -128),
                 _entry("y", "int8", 0.05, 4), _entry("y-rs", "int8", 0.05, 4))


def test_rknn2_promote_prefers_the_computed_rs_tensor():
    vf = RknnQuantCfg.parse(RKNN_TEXT, "m.quantization.cfg")
    res = vf.promote(["conv1"], Precision.INT16, graph=_rknn_graph())
    assert yaml.safe_load(res.text)["custom_quantize_layers"] == {"b-rs": "int16"}


def test_rknn2_promote_graph_output_adds_the_output_conversion():
    vf = RknnQuantCfg.parse(RKNN_TEXT, "m.quantization.cfg")
    res = vf.promote(["conv2"], Precision.FP16, graph=_rknn_graph())
    assert yaml.safe_load(res.text)["custom_quantize_layers"] == {"y-rs": "float16", "y": "float16"}
    assert sorted(res.changed) == ["y", "y-rs"]
    # the quantize_parameters section is untouched
    assert yaml.safe_load(res.text)["quantize_parameters"] == yaml.safe_load(RKNN_TEXT)["quantize_parameters"]


def test_rknn2_rs_entry_maps_to_its_tensor():
    text = _cfg(_entry("y-rs", "int16", 0.001, 0))
    cfg, rep = RknnQuantCfg.parse(text, "m.cfg").to_config(_rknn_graph(), QuantConfig())
    assert rep.matched == ["y-rs"] and rep.unmatched_records == []
    qp = cfg.act_params["y"]
    assert qp.scale.tolist() == [0.001] and qp.zero_point.tolist() == [0]
    assert (qp.qmin, qp.qmax) == (-32768, 32767)
    assert cfg.overrides["conv2"] == Precision.INT16


def test_rknn2_custom_int16_does_not_lower_a_float16_record():
    text = _cfg(_entry("b", "float16", None, None), _entry("y", "int8", 0.05, 4), custom="{b: int16, y: int16}")
    cfg, _ = RknnQuantCfg.parse(text, "m.cfg").to_config(_rknn_graph(), QuantConfig())
    assert cfg.overrides["conv1"] == Precision.FP16  # float16 record outranks the int16 request
    assert cfg.overrides["conv2"] == Precision.INT16  # int8 record raised by the request


# ----------------------------------------------------------------------------------------------- exports
@pytest.mark.parametrize("prec, words", [
    (Precision.INT16, {"qtable": "a_Conv F16", "horizon": "'InputType': 'int16', 'OutputType': 'int16'",
                       "trt": "conv1:float16", "trtexec": "conv1:fp16", "rknn": "    a: int16"}),
    (Precision.FP16, {"qtable": "a_Conv F16", "horizon": "{'ON': 'CPU'}", "trt": "conv1:float16",
                      "trtexec": "conv1:fp16", "rknn": "    a: float16"}),
    (Precision.FP32, {"qtable": "a_Conv F32", "horizon": "{'ON': 'CPU'}", "trt": "conv1:float32",
                      "trtexec": "conv1:fp32", "rknn": "    a: float16"}),
])
def test_export_precision_words(prec, words):
    out = export_all(_rknn_graph(), ["conv1"], prec)
    for name, word in words.items():
        assert word in out[name].splitlines() or word in out[name], (name, out[name])
    no16 = prec == Precision.INT16
    assert ("no int16" in out["qtable"]) == no16
    assert ("no int16" in out["trt"]) == no16
    assert out["ort"] == 'nodes_to_exclude = ["conv1"]\n'
    assert out["atc"] == "--high_precision_layer=conv1\n"


def test_export_exact_texts_int16():
    out = export_all(_rknn_graph(), ["conv1", "y"], Precision.INT16)  # a tensor name maps to its producer
    assert out["trtexec"] == ("# TensorRT has no int16 layers: float16 instead\n"
                              "--layerPrecisions=conv1:fp16,conv2:fp16 --precisionConstraints=obey\n")
    assert out["rknn"] == "custom_quantize_layers:\n    a: int16\n    y: int16\n"
    assert out["horizon"] == ("model_parameters:\n  node_info: {\"conv1\": {'ON': 'BPU', 'InputType': 'int16', "
                              "'OutputType': 'int16'}, \"conv2\": {'ON': 'BPU', 'InputType': 'int16', "
                              "'OutputType': 'int16'}}\n")


def test_rknn2_promote_without_model_prefers_rs_of_the_default_tensor_name():
    # no model: a node name maps to the toolkit's default tensor `<node>_output_0`, its computed `-rs` first
    text = _cfg(_entry("Conv_7_output_0", "int8", 0.1, 0), _entry("Conv_7_output_0-rs", "int8", 0.1, 0))
    res = RknnQuantCfg.parse(text, "m.cfg").promote(["Conv_7"], Precision.INT16)
    assert yaml.safe_load(res.text)["custom_quantize_layers"] == {"Conv_7_output_0-rs": "int16"}
