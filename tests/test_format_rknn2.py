"""rknn-toolkit2 .quantization.cfg: round trip, mapping, promotion by tensor key, errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures.vendor import make_rknn_cfg, reference_samples, yolov8_bundle
from qdebug.errors import FormatError
from qdebug.formats.base import load_vendor_file
from qdebug.formats.rknn2 import Rknn2QuantCfg, RknnQuantCfg
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QuantConfig, QuantScheme
from qdebug.runners.sim import SimBackend

TEXT = Path(__file__).resolve().parents[1] / "fixtures" / "text"
SAMPLES = reference_samples()
SAMPLE = SAMPLES / "rknn2" / "tiny.quantization.cfg" if SAMPLES else None
needs_samples = pytest.mark.skipif(SAMPLES is None, reason="../shared/reference/samples not present")


def _own() -> tuple[onnx.ModelProto, str]:
    model, _, ranges = yolov8_bundle()
    return model, make_rknn_cfg(model, ranges)


def _quant_section(text: str) -> str:
    return text[text.index("quantize_parameters:"):]


def _dtype_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip().startswith("dtype:")]


# ------------------------------------------------------------------ round trip
def test_roundtrip_own_fixture() -> None:
    _, text = _own()
    vf = RknnQuantCfg.parse(text)
    assert vf.dumps() == text
    assert text.startswith("custom_quantize_layers: {}\nquantize_parameters:\n    images:\n        qtype: asym\n")
    assert "        -   " in text


@needs_samples
def test_roundtrip_reference_sample() -> None:
    vf = load_vendor_file(f"rknn:{SAMPLE}")
    assert isinstance(vf, RknnQuantCfg)
    assert vf.dumps().encode() == SAMPLE.read_bytes()
    assert list(vf.params) == ["images", "/model.0/conv/Conv_output_0", "/model.0/act/Relu_output_0",
                               "Mul_270_out", "output0", "images_int8", "output0_int8"]
    mul = vf.params["Mul_270_out"]
    assert mul.dtype == "int8" and mul.zero_point == [23] and mul.scale == [0.006256302665261661]
    assert vf.params["images"].scale == [] and vf.params["images"].dtype == "float32"


@needs_samples
def test_autodetect_and_alias() -> None:
    assert type(load_vendor_file(str(SAMPLE))) is RknnQuantCfg
    assert type(load_vendor_file(f"rknn2:{SAMPLE}")) is Rknn2QuantCfg


# ------------------------------------------------------------------ promote
def _check_promoted(old: str, new: str, key: str, value: str = "int16") -> None:
    assert _quant_section(new) == _quant_section(old)
    assert _dtype_lines(new) == _dtype_lines(old)
    vf_old, vf_new = RknnQuantCfg.parse(old), RknnQuantCfg.parse(new)
    assert vf_new.custom == {**vf_old.custom, key: value}
    assert vf_new.params.keys() == vf_old.params.keys()


@needs_samples
def test_promote_sample_tensor_key() -> None:
    old = SAMPLE.read_text()
    vf = RknnQuantCfg.parse(old, str(SAMPLE))
    res = vf.promote(["Mul_270_out"], Precision.INT16)
    assert res.changed == ["Mul_270_out"]
    assert res.text == old.replace("custom_quantize_layers: {}\n", "custom_quantize_layers:\n    Mul_270_out: int16\n")
    _check_promoted(old, res.text, "Mul_270_out")


@needs_samples
def test_promote_refuses_node_name_like_the_toolkit() -> None:
    vf = RknnQuantCfg.parse(SAMPLE.read_text(), str(SAMPLE))
    with pytest.raises(FormatError) as ei:
        vf.promote(["Mul_270"], Precision.INT16)
    assert "Invalid operands name 'Mul_270' in custom_quantize_layers!" in ei.value.problem
    assert "did you mean Mul_270_out" in ei.value.fix


def test_promote_translates_node_names_with_graph() -> None:
    model, old = _own()
    g = ModelGraph(model)
    vf = RknnQuantCfg.parse(old, "m.quantization.cfg")
    res = vf.promote(["/model.22/Mul_2"], Precision.INT16, graph=g)
    assert res.changed == ["/model.22/Mul_2_output_0"]
    assert any("-> tensor '/model.22/Mul_2_output_0'" in n for n in res.notes)
    _check_promoted(old, res.text, "/model.22/Mul_2_output_0")
    diff = [ln for ln in res.text.splitlines() if ln not in old.splitlines()]
    assert diff == ["custom_quantize_layers:", "    /model.22/Mul_2_output_0: int16"]
    # a Conv fused with its SiLU: the toolkit keeps two quantization points (the conv output and the
    # activation output, both listed by step 1); promoting only the second leaves the conv output int8
    res2 = vf.promote(["/model.1/conv/Conv"], Precision.FP16, graph=g)
    assert res2.changed == ["/model.1/conv/Conv_output_0", "/model.1/act/Mul_output_0"]
    diff2 = [ln for ln in res2.text.splitlines() if ln not in old.splitlines()]
    assert diff2 == ["custom_quantize_layers:", "    /model.1/conv/Conv_output_0: float16",
                     "    /model.1/act/Mul_output_0: float16"]
    # without the graph the exporter's `<node>_output_0` convention still works
    res3 = vf.promote(["/model.22/Mul_2"], Precision.INT16)
    assert res3.text == res.text
    with pytest.raises(FormatError, match="Invalid operands name '/model.22/Mul_99'"):
        vf.promote(["/model.22/Mul_99"], Precision.INT16, graph=g)


def test_promote_existing_block_flow_null_and_missing_sections() -> None:
    body = _quant_section(_own()[1])
    block = "custom_quantize_layers:\n    output0: float16  # keep\n" + body
    res = RknnQuantCfg.parse(block).promote(["/model.22/Mul_2_output_0"], Precision.INT16)
    assert res.text == block.replace("  # keep\n", "  # keep\n    /model.22/Mul_2_output_0: int16\n", 1)
    res = RknnQuantCfg.parse(block).promote(["output0"], Precision.INT16)
    assert res.text == block.replace("output0: float16", "output0: int16", 1) and res.changed == ["output0"]
    assert RknnQuantCfg.parse(block).promote(["output0"], Precision.FP16).changed == []
    flow = "custom_quantize_layers: {output0: float16}\n" + body
    res = RknnQuantCfg.parse(flow).promote(["images_int8"], Precision.INT16)
    assert res.text.startswith("custom_quantize_layers:\n    output0: float16\n    images_int8: int16\nquantize_parameters:")
    null = "custom_quantize_layers:\n" + body
    res = RknnQuantCfg.parse(null).promote(["images_int8"], Precision.INT16)
    assert res.text == "custom_quantize_layers:\n    images_int8: int16\n" + body
    res = RknnQuantCfg.parse(body).promote(["images_int8"], Precision.INT16)
    assert res.text == "custom_quantize_layers:\n    images_int8: int16\n" + body
    odd = "custom_quantize_layers: {}\n" + body.replace("    images:\n", "    'a: b':\n", 1)
    res = RknnQuantCfg.parse(odd).promote(["a: b"], Precision.INT16)
    assert "    'a: b': int16\n" in res.text and RknnQuantCfg.parse(res.text).custom == {"a: b": "int16"}


def test_promote_refuses_other_dtypes_and_donor() -> None:
    _, text = _own()
    vf = RknnQuantCfg.parse(text)
    with pytest.raises(FormatError, match="int16 or float16"):
        vf.promote(["output0"], Precision.FP32)
    with pytest.raises(FormatError, match="--from16"):
        vf.promote(["output0"], Precision.INT16, donor=vf)


# ------------------------------------------------------------------ mapping into the simulator
def test_to_config_own_fixture() -> None:
    model, text = _own()
    g = ModelGraph(model)
    vf = RknnQuantCfg.parse(text, "y.cfg")
    cfg, rep = vf.to_config(g, QuantConfig(scheme=QuantScheme(profile="rknn")))
    assert cfg.source == "rknn:y.cfg"
    assert rep.unmatched_records == ["Mul_999_out"]
    assert rep.nodes_without_record == []
    assert cfg.overrides == {}
    img = cfg.act_params["images"]  # from images_int8: the float32 graph input is quantized as images_int8
    assert (img.qmin, img.qmax, int(img.zero_point[0])) == (-128, 127, -128)
    assert img.scale[0] == pytest.approx(vf.params["images_int8"].scale[0])
    assert cfg.act_params["output0"].scale[0] == pytest.approx(vf.params["output0_int8"].scale[0])
    assert "/model.22/Mul_2_output_0" in cfg.act_params
    res = vf.promote(["/model.22/Mul_2"], Precision.INT16, graph=g)
    cfg2, _ = RknnQuantCfg.parse(res.text).to_config(g, QuantConfig())
    assert cfg2.overrides == {"/model.22/Mul_2": Precision.INT16}


def test_custom_precisions_by_producing_node() -> None:
    """The toolkit's proposal is keyed by tensor; qdebug's evaluator wants producing node names. Entries
    that match no tensor are left out (two promotions plus one unknown name, mapped by hand)."""
    model, old = _own()
    g = ModelGraph(model)
    text = RknnQuantCfg.parse(old).promote(["/model.22/Mul_2", "/model.1/conv/Conv"], Precision.INT16,
                                           graph=g).text
    # a record of the file that names no tensor of this model (the fixture's Mul_999_out)
    text = text.replace("custom_quantize_layers:\n", "custom_quantize_layers:\n    Mul_999_out: int16\n", 1)
    vf = RknnQuantCfg.parse(text)
    assert set(vf.custom) == {"/model.22/Mul_2_output_0", "/model.1/conv/Conv_output_0", "/model.1/act/Mul_output_0",
                              "Mul_999_out"}
    # the fused Conv+SiLU's two tensors map back to their producing nodes, the Conv and the SiLU's Mul
    assert vf.custom_precisions(g) == {"/model.22/Mul_2": Precision.INT16, "/model.1/conv/Conv": Precision.INT16,
                                       "/model.1/act/Mul": Precision.INT16}


def test_to_config_dtype_entries_and_per_channel() -> None:
    text = """custom_quantize_layers: {}
quantize_parameters:
    x:
        qtype: asym
        qmethod: layer
        dtype: float32
        scale: []
        zero_point: []
    y:
        qtype: asym
        qmethod: channel
        dtype: int16
        scale:
        -   0.001
        -   0.002
        zero_point:
        -   0
        -   5
"""
    c = numpy_helper.from_array(np.array([2.0], dtype=np.float32), "c")
    node = helper.make_node("Mul", ["x", "c"], ["y"], name="mul")
    gp = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3])], [c])
    g = ModelGraph(helper.make_model(gp, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    cfg, rep = RknnQuantCfg.parse(text).to_config(g, QuantConfig())
    assert cfg.overrides == {"x": Precision.FP32, "mul": Precision.INT16}
    p = cfg.act_params["y"]
    assert p.axis == 1 and list(p.zero_point) == [0, 5] and (p.qmin, p.qmax) == (-32768, 32767)


def test_simulation_reproduces_hand_computed_values() -> None:
    text = """custom_quantize_layers: {}
quantize_parameters:
    x:
        qtype: asym
        qmethod: layer
        dtype: float32
        scale: []
        zero_point: []
    y:
        qtype: asym
        qmethod: layer
        dtype: float32
        scale: []
        zero_point: []
    x_int8:
        qtype: asym
        qmethod: layer
        dtype: int8
        scale:
        -   0.00392156862745098
        zero_point:
        -   -128
    y_int8:
        qtype: asym
        qmethod: layer
        dtype: int8
        scale:
        -   0.01
        zero_point:
        -   -50
"""
    c = numpy_helper.from_array(np.array([2.0], dtype=np.float32), "c")
    node = helper.make_node("Mul", ["x", "c"], ["y"], name="mul")
    gp = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], [c])
    g = ModelGraph(helper.make_model(gp, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    cfg, _ = RknnQuantCfg.parse(text).to_config(g, QuantConfig(scheme=QuantScheme(profile="rknn")))
    x = np.array([[0.0123, 0.37, 0.811, 0.999, 0.6613]], dtype=np.float32)
    b = SimBackend("rknn")
    b.prepare(g, cfg, [{"x": x}])
    y = next(b.run(g, cfg, [{"x": x}], ["y"]))["y"]
    s1 = 0.00392156862745098  # x = (q - zp) * scale, int8 [-128, 127]
    xq = (np.clip(np.round(x.astype(np.float64) / s1) - 128, -128, 127) + 128) * s1
    v = xq * 2.0
    want = (np.clip(np.round(v / 0.01) - 50, -128, 127) + 50) * 0.01  # 2.0 clips at (127 + 50) * 0.01
    assert want.max() == pytest.approx(1.77)
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ malformed input
def _expectations(prefix: str) -> list[Path]:
    return sorted(p for p in TEXT.iterdir() if p.name.startswith(prefix) and p.read_text().startswith("# expect"))


@pytest.mark.parametrize("path", _expectations("rknn_"), ids=lambda p: p.name)
def test_malformed_files_name_file_and_line(path: Path) -> None:
    m = re.match(r"# expect: (line \d+): (.*)", path.read_text().splitlines()[0])
    assert m is not None
    with pytest.raises(FormatError) as ei:
        load_vendor_file(f"rknn:{path}")
    err = ei.value
    assert err.file == str(path) and err.where == m.group(1)
    assert m.group(2) in err.problem
    assert err.fix and "\n" not in err.one_line()


def test_more_malformed_values() -> None:
    base = "custom_quantize_layers: {}\nquantize_parameters:\n    x:\n        dtype: int8\n"
    cases = {
        base + "        scale:\n        -   abc\n": ("line 6", "must be numbers"),
        base + "        zero_point:\n        -   1\n": ("line 3", "without scale"),
        base + "        scale:\n        -   1.0\n        zero_point:\n        -   0.5\n": ("line 8", "integers"),
        "quantize_parameters: 3\n": ("line 1", "not a mapping of tensor names"),
        "quantize_parameters:\n    x: 3\n": ("line 2", "is not a mapping"),
        "custom_quantize_layers: [a]\nquantize_parameters: {}\n": ("line 1", "must be a mapping"),
        "just text\n": ("line 1", "top level is not a YAML mapping"),
        "": ("line 1", "top level is not a YAML mapping"),
    }
    for text, (where, problem) in cases.items():
        with pytest.raises(FormatError) as ei:
            RknnQuantCfg.parse(text, "f.cfg")
        assert ei.value.where == where and problem in ei.value.problem, (text, ei.value.one_line())
