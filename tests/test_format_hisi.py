"""HiSilicon ATC calibration_param.txt: round trip, mapping into the simulator, promotion, errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures.vendor import make_hisi_calibration, make_hisi_calibration16, reference_samples, yolov8_bundle
from qdebug.errors import FormatError
from qdebug.formats.base import load_vendor_file
from qdebug.formats.hisi import HisiCalibration, factor_qparams, tokenize, widen_record
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QuantConfig, QuantScheme
from qdebug.runners.sim import SimBackend

TEXT = Path(__file__).resolve().parents[1] / "fixtures" / "text"
SAMPLES = reference_samples()
SAMPLE = SAMPLES / "hisi" / "yolov8n_face.calibration_param.excerpt.txt" if SAMPLES else None
needs_samples = pytest.mark.skipif(SAMPLES is None, reason="../shared/reference/samples not present")


def _sample_text() -> str:
    assert SAMPLE is not None
    return SAMPLE.read_bytes().decode("utf-8")


def _records(text: str) -> dict[str, str]:
    vf = HisiCalibration.parse(text)
    return {ly.name: vf.record_text(ly) for ly in vf.layers}


def _outside(vf: HisiCalibration, name: str) -> tuple[str, str]:
    """The text before and after a record (must be byte-identical after promoting only that record)."""
    ly = vf.by_name(name)[0]
    rec = vf.record_text(ly)
    start = vf.text.index(rec)
    return vf.text[:start], vf.text[start + len(rec):]


# ------------------------------------------------------------------ round trip
def test_roundtrip_own_fixtures() -> None:
    model, _, ranges = yolov8_bundle()
    for text in (make_hisi_calibration(model, ranges), make_hisi_calibration16(model, ranges),
                 (TEXT / "hisi_minimal.txt").read_text()):
        vf = HisiCalibration.parse(text)
        assert vf.dumps() == text
        assert "".join(t.text for t in tokenize(text)) == text


@needs_samples
def test_roundtrip_reference_sample() -> None:
    text = _sample_text()
    vf = load_vendor_file(f"hisi:{SAMPLE}")
    assert vf.dumps() == text
    assert vf.dumps().encode("utf-8") == SAMPLE.read_bytes()
    assert isinstance(vf, HisiCalibration) and len(vf.layers) == 73
    mul = vf.by_name("/model.22/Mul_2")[0]
    assert mul.calc_data_type == "F16"
    assert [(f.data_type, f.scale, f.offset) for f in mul.inputs] == [("S8", [3.19865203], [-128])]
    cat = vf.by_name("/model.22/Concat_5")[0]
    assert len(cat.inputs) == 3 and len(cat.outputs) == 1 and cat.outputs[0].data_type == "F16"
    conv = vf.by_name("/model.0/conv/Conv")[0]
    assert len(conv.weights[0].scale) == 16


@needs_samples
def test_autodetect_reference_sample() -> None:
    assert isinstance(load_vendor_file(str(SAMPLE)), HisiCalibration)


def test_minimal_keeps_unknown_fields_and_defaults() -> None:
    vf = HisiCalibration.parse((TEXT / "hisi_minimal.txt").read_text(), "m.txt")
    mul = vf.by_name("mul")[0]
    assert mul.calc_data_type == "S8"  # proto default
    assert mul.inputs[0].offset == []
    assert "future_field" in vf.dumps() and "weight_mode: NORMAL" in vf.dumps()


# ------------------------------------------------------------------ units
def test_qparams_units_signed_and_image() -> None:
    vf = HisiCalibration.parse((TEXT / "hisi_minimal.txt").read_text())
    img = factor_qparams(vf.by_name("x")[0].inputs[0])
    assert img is not None and (img.qmin, img.qmax) == (0, 255)
    lo, hi = img.range()
    assert lo[0] == 0.0 and hi[0] == pytest.approx(255 / 256.003296)
    s8 = factor_qparams(vf.by_name("mul")[0].inputs[0])
    assert s8 is not None and s8.scale[0] == pytest.approx(1 / 25.5) and s8.zero_point[0] == 0
    assert (s8.qmin, s8.qmax) == (-128, 127)


def test_widen_record_keeps_range() -> None:
    for dt, scale, off in [("S8", 3.19865203, -128), ("S8", 9.20393467, 127), ("S8", 22.9376984, -87),
                           ("U8", 256.003296, -128), ("S4", 2.0, 3)]:
        wide, s16, o16 = widen_record(dt, scale, off)
        lo8, hi8 = {"S8": (-128, 127), "U8": (0, 255), "S4": (-8, 7)}[dt]
        lo16, hi16 = {"S16": (-32768, 32767), "U16": (0, 65535)}[wide]
        if dt.startswith("U"):  # unsigned records: offset is the signed-domain shift, range [0, max/scale]
            assert hi16 / s16 == pytest.approx(hi8 / scale)
        else:
            assert (lo16 - o16) / s16 == pytest.approx((lo8 - off) / scale)
            assert (hi16 - o16) / s16 == pytest.approx((hi8 - off) / scale)


# ------------------------------------------------------------------ promote
def _promote_mul2(text: str) -> tuple[HisiCalibration, str]:
    vf = HisiCalibration.parse(text, "calibration_param.txt")
    res = vf.promote(["/model.22/Mul_2"], Precision.INT16)
    assert res.changed == ["/model.22/Mul_2"]
    assert res.extra["atc_option"] == "--high_precision_layer=/model.22/Mul_2"
    assert any("derived S16" in n and "8-bit" in n for n in res.notes)
    return vf, res.text


@needs_samples
def test_promote_derived_sample_changes_only_that_record() -> None:
    text = _sample_text()
    vf, new = _promote_mul2(text)
    before, after = _outside(vf, "/model.22/Mul_2")
    assert new.startswith(before) and new.endswith(after)
    old_recs, new_recs = _records(text), _records(new)
    assert [k for k in old_recs if old_recs[k] != new_recs[k]] == ["/model.22/Mul_2"]
    rec = new_recs["/model.22/Mul_2"]
    assert "calc_data_type: F16" in rec  # F16 compute stays F16; its S8 input becomes S16
    assert "data_type: S16" in rec and "data_type: S8" not in rec
    # hand-derived: 8-bit range [(-128+128)/3.19865203, (127+128)/3.19865203] = [0, 79.7211] on 65536 levels
    # -> scale = 65535 / 79.7211 = 3.19865203 * 257 = 822.0536, offset = -32768
    scale = float(re.search(r"scale: (\S+)", rec).group(1))
    offset = int(re.search(r"offset: (\S+)", rec).group(1))
    assert scale == pytest.approx(822.05357, rel=1e-6)
    assert offset == -32768
    assert (32767 - offset) / scale == pytest.approx(255 / 3.19865203, rel=1e-6)
    assert rec.count("\n") == old_recs["/model.22/Mul_2"].count("\n")


def test_promote_derived_own_fixture() -> None:
    model, _, ranges = yolov8_bundle()
    text = make_hisi_calibration(model, ranges)
    vf, new = _promote_mul2(text)
    before, after = _outside(vf, "/model.22/Mul_2")
    assert new.startswith(before) and new.endswith(after)
    old8 = vf.by_name("/model.22/Mul_2")[0].inputs[0]
    new16 = HisiCalibration.parse(new).by_name("/model.22/Mul_2")[0].inputs[0]
    assert new16.data_type == "S16"
    lo8, hi8 = factor_qparams(old8).range()
    lo16, hi16 = factor_qparams(new16).range()
    assert lo16[0] == pytest.approx(lo8[0], abs=1e-4) and hi16[0] == pytest.approx(hi8[0], rel=1e-6)


def test_promote_conv_keeps_8bit_weights() -> None:
    model, _, ranges = yolov8_bundle()
    text = make_hisi_calibration(model, ranges)
    vf = HisiCalibration.parse(text)
    res = vf.promote(["/model.1/conv/Conv"], Precision.INT16)
    ly = HisiCalibration.parse(res.text).by_name("/model.1/conv/Conv")[0]
    assert ly.calc_data_type == "S16" and ly.inputs[0].data_type == "S16"
    assert ly.weights[0].data_type == "S8"
    assert ly.weights[0].scale == vf.by_name("/model.1/conv/Conv")[0].weights[0].scale


def test_promote_donor_copies_record_verbatim() -> None:
    model, _, ranges = yolov8_bundle()
    text8, text16 = make_hisi_calibration(model, ranges), make_hisi_calibration16(model, ranges)
    vf, donor = HisiCalibration.parse(text8, "c8.txt"), HisiCalibration.parse(text16, "c16.txt")
    names = ["/model.22/Mul_2", "/model.6/cv2/conv/Conv"]
    res = vf.promote(names, Precision.INT16, donor=donor)
    assert res.changed == names
    old, new, d = _records(text8), _records(res.text), _records(text16)
    for name in old:
        assert new[name] == (d[name] if name in names else old[name])
    assert any("verbatim" in n for n in res.notes)
    assert res.extra["atc_option"] == "--high_precision_layer=/model.22/Mul_2;/model.6/cv2/conv/Conv"


@needs_samples
def test_promote_donor_on_sample() -> None:
    text = _sample_text()
    donor_text = text.replace("scale: 3.19865203\n      offset: -128\n    }\n  }\n}\nlayer {\n  name: \"/model.22/Concat_5\"",
                              "scale: 822.1\n      offset: -32760\n    }\n  }\n}\nlayer {\n  name: \"/model.22/Concat_5\"")
    donor_text = donor_text.replace('name: "/model.22/Mul_2"\n  calc_data_type: F16\n  quant_param {\n    input {\n'
                                    "      data_type: S8", 'name: "/model.22/Mul_2"\n  calc_data_type: F16\n'
                                    "  quant_param {\n    input {\n      data_type: S16")
    assert donor_text != text
    vf, donor = HisiCalibration.parse(text), HisiCalibration.parse(donor_text)
    res = vf.promote(["/model.22/Mul_2"], Precision.INT16, donor=donor)
    assert res.text == donor_text  # the only difference between the two files is that record


def test_promote_fp16_and_missing_fields() -> None:
    text = (TEXT / "hisi_minimal.txt").read_text()
    vf = HisiCalibration.parse(text)
    res = vf.promote(["mul"], Precision.FP16)
    ly = HisiCalibration.parse(res.text).by_name("mul")[0]
    assert ly.calc_data_type == "F16" and ly.inputs[0].data_type == "F16"
    res16 = vf.promote(["mul"], Precision.INT16)
    ly16 = HisiCalibration.parse(res16.text).by_name("mul")[0]
    # the record had neither calc_data_type nor offset: both lines are inserted with the record's indentation
    assert ly16.calc_data_type == "S16" and ly16.inputs[0].offset == [128]
    assert '  name: "mul"\n  calc_data_type: S16\n' in res16.text
    assert "      scale: 6553.5\n      offset: 128\n" in res16.text
    assert res16.text.startswith(text[: text.index('layer {\n  name: "mul"')])


def test_promote_errors() -> None:
    model, _, ranges = yolov8_bundle()
    vf = HisiCalibration.parse(make_hisi_calibration(model, ranges), "c.txt")
    with pytest.raises(FormatError, match=r"no record for layer '/model.22/Mul2'.*did you mean /model.22/Mul_2"):
        vf.promote(["/model.22/Mul2"], Precision.INT16)
    with pytest.raises(FormatError, match="not a promotion"):
        vf.promote(["/model.22/Mul_2"], Precision.INT8)
    donor = HisiCalibration.parse((TEXT / "hisi_minimal.txt").read_text(), "d.txt")
    with pytest.raises(FormatError, match="16-bit file has no record"):
        vf.promote(["/model.22/Mul_2"], Precision.INT16, donor=donor)
    # a tensor name is accepted when the graph is known (mapped to its producer)
    res = vf.promote(["/model.22/Mul_2_output_0"], Precision.INT16, graph=ModelGraph(model))
    assert res.changed == ["/model.22/Mul_2"]


# ------------------------------------------------------------------ mapping into the simulator
def test_to_config_yolov8_fixture() -> None:
    model, _, ranges = yolov8_bundle()
    g = ModelGraph(model)
    vf = HisiCalibration.parse(make_hisi_calibration(model, ranges), "c.txt")
    cfg, rep = vf.to_config(g, QuantConfig(scheme=QuantScheme(profile="hisi")))
    assert cfg.source == "hisi:c.txt"
    assert any("_bridge_" in r for r in rep.unmatched_records)
    assert rep.nodes_without_record == []
    assert "/model.22/Mul_2" in cfg.compute_fp16 and "/model.0/conv/Conv" not in cfg.compute_fp16
    assert "images" in cfg.act_params and "/model.22/Mul_2:0" in cfg.act_params
    assert "/model.3/Concat:2" in cfg.act_params
    wp = cfg.weight_params["/model.1/conv/Conv"]
    assert wp.axis == 0 and wp.scale.size == 32 and np.all(wp.zero_point == 0)
    assert cfg.overrides == {}
    res = vf.promote(["/model.22/Mul_2"], Precision.INT16)
    cfg16, _ = HisiCalibration.parse(res.text).to_config(g, QuantConfig())
    assert cfg16.overrides == {"/model.22/Mul_2": Precision.INT16}
    assert cfg16.act_params["/model.22/Mul_2:0"].bits == 16


@needs_samples
def test_sample_against_fixture_graph_reports_without_failing() -> None:
    model, _, _ = yolov8_bundle()
    vf = load_vendor_file(f"hisi:{SAMPLE}")
    cfg, rep = vf.to_config(ModelGraph(model), QuantConfig())
    assert "/model.2/Split_bridge_/model.2/Concat_nop_0" in rep.unmatched_records
    assert rep.nodes_without_record  # the excerpt lacks most of the fixture's records
    assert "/model.22/Mul_2" in cfg.compute_fp16


def _mul_model() -> onnx.ModelProto:
    c = numpy_helper.from_array(np.array([2.0], dtype=np.float32), "c")
    node = helper.make_node("Mul", ["x", "c"], ["y"], name="mul")
    g = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])], [c])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run_hisi(model: onnx.ModelProto, text: str, x: np.ndarray, out: str = "y") -> np.ndarray:
    g = ModelGraph(model)
    cfg, _ = HisiCalibration.parse(text).to_config(g, QuantConfig(scheme=QuantScheme(profile="hisi")))
    b = SimBackend("hisi")
    sample = {g.inputs[0].name: x}
    b.prepare(g, cfg, [sample])
    return next(b.run(g, cfg, [sample], [out]))[out]


MUL_FILE = """version: 65536
layer {
  name: "x"
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
  name: "mul"
  calc_data_type: CALC
  quant_param {
    input {
      data_type: S8
      scale: 10
      offset: 3
    }
  }
}
"""


@pytest.mark.parametrize("calc", ["S8", "F16"])
def test_simulation_reproduces_hand_computed_values(calc: str) -> None:
    x = np.array([[0.0123, 0.37, 0.811, 0.999, 0.2071, 0.5551]], dtype=np.float32)
    y = _run_hisi(_mul_model(), MUL_FILE.replace("CALC", calc), x)
    # image record U8, scale 256: the byte is round(x*256) clipped to [0, 255]
    x1 = np.clip(np.round(x.astype(np.float64) * 256), 0, 255) / 256
    # layer input S8, scale 10, offset 3: q = clip(round(x*10) + 3, -128, 127), x = (q - 3) / 10
    q = np.clip(np.round(x1 * 10) + 3, -128, 127)
    want = (q - 3) / 10 * 2.0
    assert np.round(x1[0, 2] * 10) + 3 == 11  # 0.80859375 -> 8.09 -> 8 (+3)
    if calc == "F16":
        want = want.astype(np.float16)
    np.testing.assert_allclose(y, want.astype(np.float32), rtol=0, atol=1e-6)


def test_simulation_with_promoted_s16_record() -> None:
    text = MUL_FILE.replace("CALC", "F16")
    res = HisiCalibration.parse(text).promote(["mul"], Precision.INT16)
    assert "scale: 2570\n      offset: 899\n" in res.text  # 10*257, 3*257+128
    x = np.array([[0.0123, 0.37, 0.811, 0.999, 0.2071, 0.5551]], dtype=np.float32)
    y = _run_hisi(_mul_model(), res.text, x)
    x1 = np.clip(np.round(x.astype(np.float64) * 256), 0, 255) / 256
    q = np.clip(np.round(x1 * 2570) + 899, -32768, 32767)
    want = ((q - 899) / 2570 * 2.0).astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-6)


def test_simulation_per_channel_weights() -> None:
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.5, size=(3, 2, 1, 1)).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[1, 1])
    g = helper.make_graph([conv], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 1, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 1, 1])],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    wscales = [17.0, 40.0, 90.0]
    text = ('version: 65536\nlayer {\n  name: "conv"\n  quant_param {\n    input {\n      data_type: S8\n'
            "      scale: 50\n      offset: 0\n    }\n    weight {\n      data_type: S8\n"
            + "".join(f"      scale: {s}\n" for s in wscales) + "    }\n  }\n  weight_mode: NORMAL\n}\n")
    x = np.array([0.3137, -0.7771], dtype=np.float32).reshape(1, 2, 1, 1)
    y = _run_hisi(model, text, x)
    xq = np.clip(np.round(x.astype(np.float64) * 50), -128, 127) / 50
    s = np.array(wscales).reshape(3, 1, 1, 1)
    wq = np.clip(np.round(w.astype(np.float64) * s), -128, 127) / s
    want = np.einsum("oc,c->o", wq[:, :, 0, 0], xq[0, :, 0, 0]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ malformed input
def _expectations(prefix: str) -> list[Path]:
    return sorted(p for p in TEXT.iterdir() if p.name.startswith(prefix) and p.read_text().startswith("# expect"))


@pytest.mark.parametrize("path", _expectations("hisi_"), ids=lambda p: p.name)
def test_malformed_files_name_file_and_line(path: Path) -> None:
    m = re.match(r"# expect: (line \d+): (.*)", path.read_text().splitlines()[0])
    assert m is not None
    with pytest.raises(FormatError) as ei:
        load_vendor_file(f"hisi:{path}")
    err = ei.value
    assert err.file == str(path) and err.where == m.group(1)
    assert m.group(2) in err.problem
    assert err.fix
    line = err.one_line()
    assert "\n" not in line and line.startswith(f"{path}:{m.group(1)}: ")


def test_unreadable_inputs(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="not found"):
        load_vendor_file(f"hisi:{tmp_path / 'missing.txt'}")
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"version: 1\nlayer { name: \"\xff\xfe\" }")
    with pytest.raises(FormatError, match="not UTF-8"):
        load_vendor_file(f"hisi:{bad}")
    other = tmp_path / "x.txt"
    other.write_text("hello: world\n")
    with pytest.raises(FormatError, match="cannot tell the file format"):
        load_vendor_file(str(other))
    with pytest.raises(FormatError, match="no `layer"):
        load_vendor_file(f"hisi:{other}")
