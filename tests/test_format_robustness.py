"""Vendor readers: numbers validated at parse time, YAML without tags, line endings kept, big files streamed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fixtures.vendor import (
    make_hisi_calibration,
    make_hisi_calibration16,
    make_rknn1_layers,
    make_rknn_cfg,
    reference_samples,
    replicate_records,
    yolov8_bundle,
)
from qdebug.errors import FormatError
from qdebug.formats import rknn_yaml
from qdebug.formats.base import decode_text, load_vendor_file
from qdebug.formats.hisi import HisiCalibration
from qdebug.formats.hisi_text import fast_layer, read_layers
from qdebug.formats.rknn1 import Rknn1QuantizeLayers
from qdebug.formats.rknn2 import RknnQuantCfg
from qdebug.formats.rknn2_read import read_cfg
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QuantConfig

TEXT = Path(__file__).resolve().parents[1] / "fixtures" / "text"
SAMPLES = reference_samples()

HISI = """version: 65536
layer {
  name: "a"
  calc_data_type: S8
  quant_param {
    input {
      data_type: DT
      scale: SCALE
      offset: OFFSET
    }
  }
}
"""
RKNN = """custom_quantize_layers: {}
quantize_parameters:
    t:
        qtype: asym
        qmethod: layer
        dtype: DTYPE
        scale:
        -   SCALE
        zero_point:
        -   ZP
"""


def _hisi(dt: str = "S8", scale: str = "2.5", offset: str = "-3") -> str:
    return HISI.replace("DT", dt).replace("SCALE", scale).replace("OFFSET", offset)


def _rknn(dtype: str = "int8", scale: str = "0.5", zp: str = "-3") -> str:
    return RKNN.replace("DTYPE", dtype).replace("SCALE", scale).replace("ZP", zp)


def _error(fn, text: str) -> FormatError:
    with pytest.raises(FormatError) as ei:
        fn(text, "f.txt")
    err = ei.value
    assert err.file == "f.txt" and err.fix and "\n" not in err.one_line()
    return err


# ------------------------------------------------------------------ numbers, HiSilicon
@pytest.mark.parametrize(("kw", "line", "problem"), [
    ({"scale": "0x" + "f" * 300}, 8, "integer of 302 characters"),
    ({"scale": "1e-320"}, 8, "outside the normal float32 range"),
    ({"scale": "1e-39"}, 8, "outside the normal float32 range"),
    ({"scale": "3.5e38"}, 8, "outside the normal float32 range"),
    ({"scale": "1e400"}, 8, "must be a finite number"),
    ({"scale": "-inf"}, 8, "must be a finite number"),
    ({"scale": "nan"}, 8, "must be a finite number"),
    ({"scale": "0"}, 8, "scale must be > 0"),
    ({"scale": "-0x10"}, 8, "scale must be > 0, got -0x10"),
    ({"offset": "1" * 400}, 9, "integer of 400 characters"),
    ({"offset": "9223372036854775808"}, 9, "outside the S8 range -128..127"),
    ({"offset": "128"}, 9, "outside the S8 range"),
    ({"offset": "1e300"}, 9, "outside the S8 range"),
    ({"offset": "1.5"}, 9, "must be an integer"),
    ({"dt": "U8", "offset": "256"}, 9, "outside the U8 range -128..255"),
    ({"dt": "S16", "offset": "32768"}, 9, "outside the S16 range"),
    ({"dt": "99999999999999999999"}, 7, "unknown DataType"),
    ({"dt": "10"}, 7, "unknown DataType"),
])
def test_hisi_numbers_checked_at_parse_time(kw: dict[str, str], line: int, problem: str) -> None:
    text = _hisi(**kw)
    err = _error(HisiCalibration.parse, text)
    assert problem in err.problem and err.where == f"line {line}", err.one_line()


def test_hisi_valid_edge_numbers() -> None:
    for kw in ({"scale": "1.1754944e-38"}, {"scale": "3.4e38"}, {"scale": "0x10"}, {"scale": "256.003296f"},
               {"dt": "U8", "offset": "-128"}, {"dt": "U8", "offset": "255"}, {"dt": "2", "offset": "127"},
               {"dt": "F16", "offset": "2147483647"}):
        HisiCalibration.parse(_hisi(**kw))
    ly = HisiCalibration.parse(_hisi(scale="0x10")).layers[0]
    assert ly.inputs[0].scale == [16.0] and ly.inputs[0].offset == [-3]
    with pytest.raises(FormatError, match="version 4294967296 is outside"):
        HisiCalibration.parse(_hisi().replace("65536", str(2 ** 32)))


def test_hisi_derived_scale_that_overflows_float32_is_refused() -> None:
    vf = HisiCalibration.parse(_hisi(scale="3e36"), "c.txt")
    with pytest.raises(FormatError, match="does not fit a float32") as ei:
        vf.promote(["a"], Precision.INT16)
    assert ei.value.where == "line 8"
    assert "F16" in vf.promote(["a"], Precision.FP16).text


# ------------------------------------------------------------------ numbers and tags, RKNN
@pytest.mark.parametrize(("kw", "line", "problem"), [
    ({"scale": "1.0e-320"}, 8, "outside the normal float32 range"),
    ({"scale": "1e-320"}, 8, "scale must be numbers, got '1e-320'"),  # YAML 1.1: no dot, a string
    ({"scale": "1.0e+39"}, 8, "outside the normal float32 range"),
    ({"scale": "1" * 400}, 8, "scale must be numbers"),
    ({"scale": ".nan"}, 8, "scale must be numbers"),
    ({"scale": "-0.5"}, 8, "scale must be > 0"),
    ({"zp": "1" * 400}, 10, "zero_point must be numbers"),
    ({"zp": "9223372036854775808"}, 10, "outside the int8 range -128..127"),
    ({"zp": "-129"}, 10, "outside the int8 range"),
    ({"dtype": "uint8", "zp": "-1"}, 10, "outside the uint8 range 0..255"),
    ({"dtype": "int16", "zp": "32768"}, 10, "outside the int16 range"),
    ({"zp": "0.5"}, 10, "zero_point must be integers"),
    ({"zp": "!!timestamp 2001-12-14"}, 10, "YAML tags"),
    ({"zp": "!!python/object/apply:os.system ['true']"}, 10, "YAML tags"),
    ({"zp": "&a 1"}, 10, "YAML anchors"),
    ({"zp": "*a"}, 10, "YAML aliases"),
    ({"dtype": "2001-12-14"}, 6, "unknown dtype '2001-12-14'"),
    ({"dtype": "int4"}, 6, "unknown dtype 'int4'"),
])
def test_rknn_numbers_and_tags_checked_at_parse_time(kw: dict[str, str], line: int, problem: str) -> None:
    text = _rknn(**kw)
    for exact in (False, True):
        err = _error(lambda t, p, exact=exact: read_cfg(t, p, exact=exact), text)
        assert problem in err.problem and err.where == f"line {line}", err.one_line()


def test_yaml_dates_stay_strings_and_tags_are_refused_everywhere() -> None:
    vf = RknnQuantCfg.parse(_rknn().replace("qtype: asym", "qtype: 2001-12-14"))
    assert vf.params["t"].scale == [0.5]
    err = _error(RknnQuantCfg.parse, _rknn().replace("{}", "{t: 2001-12-14}"))
    assert "unknown dtype '2001-12-14'" in err.problem and err.where == "line 1"
    err = _error(RknnQuantCfg.parse, "custom_quantize_layers: !!timestamp 2001-12-14\n" + _rknn()[27:])
    assert "YAML tags" in err.problem and err.where == "line 1" and "dates" in err.fix
    for text in ("customized_quantize_layers:\n    Conv_a_1: !!timestamp 2001-12-14\n",
                 "customized_quantize_layers: !!timestamp x\n"):
        err = _error(Rknn1QuantizeLayers.parse, text)
        assert "YAML tags" in err.problem and err.where in ("line 1", "line 2")
    err = _error(Rknn1QuantizeLayers.parse, "customized_quantize_layers:\n    Conv_a_1: 2001-12-14\n")
    assert "unknown quantized dtype '2001-12-14'" in err.problem and err.where == "line 2"


def test_rknn_duplicate_top_level_key_and_control_characters() -> None:
    err = _error(RknnQuantCfg.parse, _rknn() + "custom_quantize_layers: {}\n")
    assert "given twice" in err.problem and err.where == "line 11"
    err = _error(RknnQuantCfg.parse, _rknn().replace("asym", "as\x07ym"))
    assert "not allowed" in err.problem and err.where == "line 4"
    err = _error(RknnQuantCfg.parse, "custom_quantize_layers: {}\nquantize_parameters: " + "[" * 2000 + "\n")
    assert err.where == "line 2"


def test_decode_errors_name_the_line() -> None:
    with pytest.raises(FormatError) as ei:
        decode_text(b"version: 1\nlayer {\n  name: \"\xff\"\n", "c.txt")
    assert ei.value.where == "line 3" and "UTF-8" in ei.value.problem


# ------------------------------------------------------------------ line endings and byte order marks
def _crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


def test_hisi_crlf_promotion_keeps_crlf() -> None:
    text = (TEXT / "hisi_minimal.txt").read_text()
    for dtype in (Precision.INT16, Precision.FP16):
        lf = HisiCalibration.parse(text).promote(["mul"], dtype).text
        crlf = HisiCalibration.parse(_crlf(text)).promote(["mul"], dtype).text
        assert crlf == _crlf(lf)
    assert "calc_data_type: S16\r\n" in crlf.replace("F16", "S16") or "calc_data_type: F16\r\n" in crlf
    # a donor record with LF endings is written with the target's CRLF endings (and the other way round)
    model, _, ranges = yolov8_bundle()
    t8, t16 = make_hisi_calibration(model, ranges), make_hisi_calibration16(model, ranges)
    res = HisiCalibration.parse(_crlf(t8)).promote(["/model.22/Mul_2"], Precision.INT16,
                                                   donor=HisiCalibration.parse(t16))
    assert res.text == _crlf(HisiCalibration.parse(t8).promote(["/model.22/Mul_2"], Precision.INT16,
                                                               donor=HisiCalibration.parse(t16)).text)
    res = HisiCalibration.parse(t8).promote(["/model.22/Mul_2"], Precision.INT16,
                                            donor=HisiCalibration.parse(_crlf(t16)))
    assert "\r" not in res.text


def test_hisi_inserted_line_goes_after_a_trailing_comment() -> None:
    text = (TEXT / "hisi_minimal.txt").read_text().replace('name: "mul"', 'name: "mul"  # the stride Mul')
    res = HisiCalibration.parse(text).promote(["mul"], Precision.INT16)
    assert '  name: "mul"  # the stride Mul\n  calc_data_type: S16\n' in res.text


def test_rknn_crlf_promotion_keeps_crlf() -> None:
    model, _, ranges = yolov8_bundle()
    body = make_rknn_cfg(model, ranges)
    body = body[body.index("quantize_parameters:"):]
    g = ModelGraph(model)
    for head in ("custom_quantize_layers: {}\n", "custom_quantize_layers: {output0: float16}  # c\n",
                 "custom_quantize_layers:\n", "custom_quantize_layers:\n    output0: float16  # keep\n", ""):
        lf = RknnQuantCfg.parse(head + body).promote(["/model.22/Mul_2"], Precision.INT16, graph=g).text
        crlf = RknnQuantCfg.parse(_crlf(head + body)).promote(["/model.22/Mul_2"], Precision.INT16, graph=g).text
        assert crlf == _crlf(lf), head
        assert RknnQuantCfg.parse(crlf).custom["/model.22/Mul_2_output_0"] == "int16"
    text = _crlf(make_rknn1_layers(model, ["/model.0/conv/Conv"]))
    res = Rknn1QuantizeLayers.parse(text).promote(["/model.22/Mul_2"], Precision.INT16, graph=g)
    assert res.text.count("\n") == res.text.count("\r\n") == 3


def test_byte_order_mark_is_kept() -> None:
    hisi = "\ufeff" + (TEXT / "hisi_minimal.txt").read_text()
    vf = HisiCalibration.parse(hisi)
    assert vf.dumps() == hisi and vf.promote(["mul"], Precision.INT16).text.startswith("\ufeffversion")
    rknn = "\ufeff" + _rknn()[len("custom_quantize_layers: {}\n"):]
    res = RknnQuantCfg.parse(rknn).promote(["t"], Precision.INT16)
    assert res.text.startswith("\ufeffcustom_quantize_layers:\n    t: int16\n")
    assert RknnQuantCfg.parse(res.text).custom == {"t": "int16"}


def test_long_tensor_names_are_written_on_one_line() -> None:
    name = "/model.22/" + "very_long_name/" * 12 + "Mul_output_0"
    assert len(name) > 128
    text = _rknn().replace("    t:", f"    {name}:")
    res = RknnQuantCfg.parse(text).promote([name], Precision.INT16)
    assert RknnQuantCfg.parse(res.text).custom == {name: "int16"}
    assert res.text.count("\n") == text.count("\n") + 1
    with pytest.raises(FormatError, match="too long"):
        rknn_yaml.render_entry("x" * 1200, "int16", "f.cfg")


# ------------------------------------------------------------------ fast readers agree with the exact ones
def _hisi_texts() -> list[str]:
    model, _, ranges = yolov8_bundle()
    out = [make_hisi_calibration(model, ranges), make_hisi_calibration16(model, ranges),
           (TEXT / "hisi_minimal.txt").read_text(), (TEXT / "hisi_layouts.txt").read_text()]
    if SAMPLES is not None:
        out.append((SAMPLES / "hisi" / "yolov8n_face.calibration_param.excerpt.txt").read_text())
    return out


def _rknn_texts() -> list[str]:
    model, _, ranges = yolov8_bundle()
    out = [make_rknn_cfg(model, ranges), (TEXT / "rknn_layouts.cfg").read_text(),
           (TEXT / "rknn" / "yolov8_fixture.quantization.cfg").read_text()]
    if SAMPLES is not None:
        out += [(SAMPLES / "rknn2" / n).read_text() for n in ("tiny.quantization.cfg",
                                                              "fixture_yolov8.step1.quantization.cfg")]
    return out


def test_fast_readers_agree_with_exact_readers() -> None:
    for text in _hisi_texts():
        fast, exact = read_layers(text, "f"), read_layers(text, "f", exact=True)
        assert fast == exact
        assert read_layers(_crlf(text), "f") == read_layers(_crlf(text), "f", exact=True)
    for text in _rknn_texts():
        fast, exact = read_cfg(text, "f"), read_cfg(text, "f", exact=True)
        assert (fast.params, fast.custom, fast.indent) == (exact.params, exact.custom, exact.indent)
        crlf = read_cfg(_crlf(text), "f")
        assert (crlf.params, crlf.custom) == (fast.params, fast.custom)


def test_atc_layout_records_take_the_fast_path() -> None:
    text = _hisi_texts()[0]
    starts = [m.start() for m in re.finditer(r"^layer \{", text, re.M)]
    assert all(fast_layer(text, s, 1 + text.count("\n", 0, s)) is not None for s in starts)
    odd = (TEXT / "hisi_layouts.txt").read_text()
    assert [fast_layer(odd, m.start(), 1) is not None for m in re.finditer(r"^layer", odd, re.M)] == [
        False, False, False, True, False]


def test_layouts_the_line_scanner_cannot_cut_are_read_whole() -> None:
    text = _rknn().replace("        scale:\n        -   0.5\n", "        scale: [0.5,\n    0.25]\n")
    with pytest.raises(FormatError, match="scale"):  # two scales for one zero point is fine; checked whole
        RknnQuantCfg.parse(text.replace("-   -3", "-   -3\n        -   1\n        -   2"))
    vf = RknnQuantCfg.parse(text)
    assert vf.params["t"].scale == [0.5, 0.25]


def test_big_pieces_outside_the_toolkit_layout_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _rknn().replace("        scale:\n        -   0.5\n", "        scale: [0.5,\n    0.25]\n")
    monkeypatch.setattr(rknn_yaml, "EXACT_LIMIT", 100)
    err = _error(RknnQuantCfg.parse, text)
    assert "not in the layout the toolkit writes" in err.problem and err.where == "line 3"
    big = _rknn() + "".join(_rknn()[48:].replace("    t:", f"    t{k}:") for k in range(20))
    assert len(RknnQuantCfg.parse(big).params) == 21  # in the toolkit layout: read entry by entry


# ------------------------------------------------------------------ big files: one pass, only promoted records change
def test_big_hisi_file_promotes_only_the_record() -> None:
    model, _, ranges = yolov8_bundle()
    text = "".join(replicate_records(make_hisi_calibration(model, ranges), "hisi", copies=40))
    assert len(text) > 1_000_000
    vf = HisiCalibration.parse(text, "big.txt")
    assert vf.layers == read_layers(text, "big.txt", exact=True)
    res = vf.promote(["/model.22/Mul_2", "/model.4/conv/Conv_copy7"], Precision.INT16)
    assert res.changed == ["/model.22/Mul_2", "/model.4/conv/Conv_copy7"]
    new = HisiCalibration.parse(res.text)
    for old, ny in zip(vf.layers, new.layers, strict=True):
        same = vf.record_text(old) == new.record_text(ny)
        assert same == (old.name not in res.changed), old.name
    assert new.by_name("/model.22/Mul_2")[0].inputs[0].data_type == "S16"


def test_big_rknn_file_promotes_only_the_custom_section() -> None:
    model, _, ranges = yolov8_bundle()
    big = "".join(replicate_records(make_rknn_cfg(model, ranges), "rknn", copies=60))
    assert len(big) > 1_000_000
    vf = RknnQuantCfg.parse(big, "big.cfg")
    exact = read_cfg(big, "big.cfg", exact=True)
    assert (vf.params, vf.custom) == (exact.params, exact.custom)
    res = vf.promote(["/model.22/Mul_2"], Precision.INT16, graph=ModelGraph(model))
    assert res.text == big.replace("custom_quantize_layers: {}\n",
                                   "custom_quantize_layers:\n    /model.22/Mul_2_output_0: int16\n", 1)
    cfg, _ = RknnQuantCfg.parse(res.text).to_config(ModelGraph(model), QuantConfig())
    assert cfg.overrides == {"/model.22/Mul_2": Precision.INT16}


def test_load_vendor_file_keeps_crlf_bytes(tmp_path: Path) -> None:
    p = tmp_path / "c.txt"
    p.write_bytes(_crlf((TEXT / "hisi_minimal.txt").read_text()).encode())
    vf = load_vendor_file(f"hisi:{p}")
    assert vf.dumps().encode() == p.read_bytes()
