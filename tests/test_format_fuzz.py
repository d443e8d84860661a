"""Fuzz every registered vendor-file parser with mutated real-shaped files: they may only ever raise FormatError.

Mutations work on bytes: bit flips, character and line deletions/duplications/insertions, numbers replaced by
huge, tiny, subnormal, NaN, infinite, hexadecimal, negative or date-like values, YAML tags/anchors/aliases and
other injected syntax, truncation, CRLF conversions, re-indentation and encoding changes. A file that decodes
must parse or raise FormatError (one line, naming the file and a line), and the fast readers must agree
with the exact ones. A file that parses must round-trip byte for byte, map onto the model, and accept a
promotion (or refuse it with FormatError) whose text parses again and keeps the file's line endings.

`test_fuzz` runs a few hundred cases by default; `test_fuzz_many` (marked slow, skipped unless selected with
`-m slow`) runs over 10,000.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.vendor import make_hisi_calibration, make_rknn1_layers, make_rknn_cfg, yolov8_bundle
from qdebug.errors import FormatError
from qdebug.formats.base import FORMATS, VendorFile, decode_text
from qdebug.formats.hisi import HisiCalibration
from qdebug.formats.hisi_text import read_layers
from qdebug.formats.rknn1 import Rknn1QuantizeLayers
from qdebug.formats.rknn2 import RknnQuantCfg
from qdebug.formats.rknn2_read import read_cfg
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QuantConfig

TEXT = Path(__file__).resolve().parents[1] / "fixtures" / "text"
CHARS = "{}<>:;,[]\"'#\n\t -+.0123456789eExX_abcSUF\\/|&*!%@`?é~"
NUMBERS = ["0", "-0", "0.0", "1e-320", "1.0e-320", "4.9e-324", "1e-45", "1.0e-39", "1.1754943e-38", "3.5e38",
           "1.0e+39", "1e308", "1e400", "1.0e+400", "-1", "-3.5", "-128", "-129", "127", "128", "255", "256",
           "-32769", "65536", "2147483648", "-2147483649", "9223372036854775808", "-9223372036854775809",
           "1" * 400, "9" * 25, "0x" + "f" * 300, "0x1F", "-0x10", "0X7fffffff", "nan", "NaN", "-nan", ".nan",
           "inf", "-inf", "+inf", "Infinity", ".inf", "-.inf", "1.5f", "1e", "1.2.3", ".", "-", "+", "", "007",
           "0o17", "0b101", "1_000", "1:30", "12:30:45", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "~",
           "null", "true", "yes", "[]", "{}", "[1, 2]", '"1.0"', "'x'"]
INJECT = ["!!timestamp ", "!!timestamp 2001-12-14", "!!python/object/apply:os.system ['echo'] ", "!!binary ",
          "!!str ", "!!float ", "!custom ", "&a ", "*a", "<<: *a", "? ", "%YAML 1.1\n", "---\n", "...\n", "- ",
          "{", "}", "[", "]", "<", ">", "\"", "'", "#", ": ", ":", ";", ",", "\\", "\t", "\x00", "\x07", "\x7f",
          "\u2028", "\x85", "\r", "\ufeff", "é", "layer {", "quant_param {", "input {", "data_type: ",
          "scale: ", "offset: ", "custom_quantize_layers:", "quantize_parameters:", "dtype: int16",
          "zero_point:\n        -   1e300\n", "scale:\n        -   -0.5\n"]
KINDS = ["flip", "del_char", "dup_char", "ins_text", "del_line", "dup_line", "swap_lines", "ins_line", "number",
         "number", "number", "inject", "truncate", "crlf", "crlf_some", "lf", "indent", "encoding"]
NUMBER = re.compile(rb"[-+]?(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)")
QUICK = {"hisi": 120, "rknn": 120, "rknn2": 30, "rknn1": 60, "table": 30}  # runs by default (360 cases)
MANY = {"hisi": 3600, "rknn": 3600, "rknn2": 400, "rknn1": 2600, "table": 400}  # marked slow (10,600 cases)


@functools.cache
def _graph() -> ModelGraph:
    return ModelGraph(yolov8_bundle()[0])


def _head(text: str, marker: str, count: int) -> str:
    """The text up to the `count`-th occurrence of `marker` at a line start (a short real-shaped file)."""
    pos = -1
    for _ in range(count):
        pos = text.find("\n" + marker, pos + 1)
        if pos < 0:
            return text
    return text[: pos + 1]


@functools.cache
def bases() -> dict[str, tuple[str, ...]]:
    """Valid real-shaped files per registered format (every format must have some: see test_every_format)."""
    model, _, ranges = yolov8_bundle()
    hisi = make_hisi_calibration(model, ranges)
    tail = hisi[hisi.index('layer {\n  name: "/model.22/Concat_4"'):]
    minimal = (TEXT / "hisi_minimal.txt").read_text().replace("version: 65536\n", "", 1)  # one version per file
    hisi_short = _head(hisi, "layer {", 6) + tail + minimal
    rknn = _head(make_rknn_cfg(model, ranges), "    /model.1", 1) + (
        "    output0_int8:\n        dtype: int8\n        qmethod: layer\n        scale:\n        -   0.5\n"
        "        zero_point:\n        -   -3\n")
    rknn_custom = rknn.replace("custom_quantize_layers: {}\n", "custom_quantize_layers:\n    output0_int8: int16\n")
    rknn1 = make_rknn1_layers(model, ["/model.22/Mul_2", "/model.0/conv/Conv"])
    out = {
        "hisi": (hisi_short, (TEXT / "hisi_layouts.txt").read_text(), _crlf(_head(hisi, "layer {", 3) + tail)),
        "rknn": (rknn, rknn_custom, (TEXT / "rknn_layouts.cfg").read_text(), _crlf(rknn)),
        "rknn1": (rknn1, "# hybrid quantization\ncustomized_quantize_layers:\n    Conv_Conv_434_104: float32\n"
                         "    Reshape_Reshape_614_2_acuity_mark_perm_157: dynamic_fixed_point-i16\n", _crlf(rknn1)),
    }
    out["rknn2"] = out["rknn"]
    table = '{\n "/model.0/conv/Conv_output_0": {"max": 3.0, "min": -1.0, "scale": 0.0156},\n "images": {"max": 1.0, "min": 0.0}\n}\n'
    trt = "TRT-8601-EntropyCalibration2\n/model.0/conv/Conv_output_0: 3cc1c1c2\nimages: 3c010204\n"
    out["table"] = (table, trt, _crlf(trt))
    return out


def _crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


@st.composite
def mutated(draw: st.DrawFn, fmt: str) -> bytes:
    """A valid file of `fmt` with one to four random mutations, as bytes."""
    data = draw(st.sampled_from(bases()[fmt])).encode("utf-8")
    for _ in range(draw(st.integers(1, 4))):
        data = _mutate(draw, draw(st.sampled_from(KINDS)), data)
    return data


def _mutate(draw: st.DrawFn, kind: str, data: bytes) -> bytes:  # noqa: C901  (one branch per mutation)
    n = len(data)
    i = draw(st.integers(0, max(n - 1, 0)))
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1:] if n else data
    if kind == "del_char":
        return data[:i] + data[i + 1:]
    if kind == "dup_char":
        return data[:i] + data[i:i + 1] + data[i:]
    if kind == "ins_text":
        return data[:i] + draw(st.text(alphabet=CHARS, min_size=1, max_size=4)).encode("utf-8") + data[i:]
    if kind == "number":
        nums = list(NUMBER.finditer(data))
        if not nums:
            return data
        m = nums[draw(st.integers(0, len(nums) - 1))]
        return data[:m.start()] + draw(st.sampled_from(NUMBERS)).encode("utf-8") + data[m.end():]
    if kind == "inject":
        lines = _lines(data)
        if not lines:
            return data
        k = draw(st.integers(0, len(lines) - 1))
        ln = lines[k]
        at = ln.find(b": ") + 2 if b": " in ln and draw(st.booleans()) else draw(st.integers(0, len(ln)))
        lines[k] = ln[:at] + draw(st.sampled_from(INJECT)).encode("utf-8") + ln[at:]
        return b"".join(lines)
    if kind == "truncate":
        return data[:i]
    if kind == "crlf":
        return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if kind in ("crlf_some", "lf", "indent", "del_line", "dup_line", "swap_lines", "ins_line"):
        lines = _lines(data)
        if not lines:
            return data
        k = draw(st.integers(0, len(lines) - 1))
        ln = lines[k]
        if kind == "crlf_some":
            lines[k] = ln[:-1] + b"\r\n" if ln.endswith(b"\n") and not ln.endswith(b"\r\n") else ln
        elif kind == "lf":
            lines[k] = ln[:-2] + b"\n" if ln.endswith(b"\r\n") else ln
        elif kind == "indent":
            body = ln.lstrip(b" ")
            lines[k] = draw(st.sampled_from([b"", b" ", b"  ", b"   ", b"    ", b"        ", b"\t"])) + body
        elif kind == "del_line":
            del lines[k]
        elif kind == "dup_line":
            lines.insert(k, ln)
        elif kind == "swap_lines":
            j = draw(st.integers(0, len(lines) - 1))
            lines[k], lines[j] = lines[j], lines[k]
        else:
            lines.insert(k, draw(st.sampled_from(lines)))
        return b"".join(lines)
    # encoding changes
    enc = draw(st.sampled_from(["bom", "latin1", "utf16", "nul", "overlong", "u2028"]))
    if enc == "bom":
        return b"\xef\xbb\xbf" + data
    if enc == "latin1":
        return data[:i] + b"\xe9" + data[i:]
    if enc == "utf16":
        return data.decode("utf-8", "replace").encode("utf-16")
    if enc == "nul":
        return data[:i] + b"\x00" + data[i:]
    if enc == "overlong":
        return data[:i] + b"\xc0\xaf" + data[i:]
    return data[:i] + "\u2028".encode() + data[i:]


def _check_error(exc: FormatError, parsing: bool = True) -> None:
    assert exc.file == "f"
    assert (exc.where is None and not parsing) or re.fullmatch(r"line \d+", exc.where or ""), exc.one_line()
    assert exc.fix
    assert "\n" not in exc.one_line() and "\r" not in exc.one_line()


def _exact_agrees(cls: type[VendorFile], text: str, vf: VendorFile | None, err: FormatError | None) -> None:
    """The fast readers (ATC-layout records, toolkit-layout entries) agree with the exact ones."""
    try:
        if issubclass(cls, HisiCalibration):
            exact: object = read_layers(text, "f", exact=True)
            if vf is not None:
                assert vf.layers == exact  # type: ignore[attr-defined]
        elif issubclass(cls, RknnQuantCfg):
            data = read_cfg(text, "f", exact=True)
            if vf is not None:
                assert (vf.params, vf.custom) == (data.params, data.custom)  # type: ignore[attr-defined]
        else:
            return
    except FormatError as exc:
        assert err is not None, f"only the exact reader refuses: {exc.one_line()}"
        return
    if err is not None and issubclass(cls, HisiCalibration) and "no `layer" in err.problem:
        return  # the layers were read; the file just has none
    assert err is None, f"only the fast reader refuses: {err.one_line()}"


def _exercise(fmt: str, data: bytes) -> None:
    cls = FORMATS[fmt]
    try:
        text = decode_text(data, "f")
    except FormatError as exc:
        _check_error(exc)
        return
    for c in FORMATS.values():
        c.sniff(text, "f")
    vf: VendorFile | None = None
    err: FormatError | None = None
    try:
        vf = cls.parse(text, "f")
    except FormatError as exc:
        _check_error(exc)
        err = exc
    _exact_agrees(cls, text, vf, err)
    if vf is None:
        return
    assert vf.dumps().encode("utf-8") == data
    try:
        vf.to_config(_graph(), QuantConfig())
    except FormatError as exc:  # e.g. a cfg none of whose tensors is in the model: refused in one line
        _check_error(exc)
    if isinstance(vf, HisiCalibration):
        every = [ly.name for ly in vf.layers]
    elif isinstance(vf, RknnQuantCfg):
        every = list(vf.params)
    else:
        every = ["/model.22/Mul_2", "/model.0/conv/Conv"]
    k = len(data) % len(every)  # which records to promote: varies with the mutation, deterministically
    names = every[k:k + 2]
    crlf_only = "\r\n" in text and text.count("\n") == text.count("\r\n")
    for dtype in (Precision.INT16, Precision.FP16):
        try:
            res = vf.promote(names, dtype, graph=_graph() if fmt != "hisi" else None)
        except FormatError as exc:
            _check_error(exc, parsing=False)
            continue
        again = cls.parse(res.text, "f")
        assert again.dumps() == res.text
        if crlf_only:
            assert res.text.count("\n") == res.text.count("\r\n"), "a bare LF in a CRLF file"
        elif "\r" not in text:
            assert "\r" not in res.text


def _run(fmt: str, count: int) -> None:
    @settings(max_examples=count, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(mutated(fmt))
    def check(data: bytes) -> None:
        _exercise(fmt, data)

    check()


@pytest.mark.parametrize("fmt", sorted(QUICK))
def test_fuzz(fmt: str) -> None:
    _run(fmt, QUICK[fmt])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(MANY))
def test_fuzz_many(fmt: str, request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("over 10,000 cases: run with -m slow")
    _run(fmt, MANY[fmt])


def test_every_format_is_fuzzed() -> None:
    assert set(FORMATS) == set(bases()) == set(QUICK) == set(MANY)
    assert sum(MANY.values()) >= 10_000


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.text(alphabet=CHARS + "abcdefghijklmnopqrstuvwxyz", max_size=200))
def test_fuzz_random_text(text: str) -> None:
    for cls in (HisiCalibration, RknnQuantCfg, Rknn1QuantizeLayers):
        try:
            cls.parse(text, "f")
        except FormatError as exc:
            _check_error(exc)


def test_bases_are_valid() -> None:
    for fmt, texts in bases().items():
        for text in texts:
            assert FORMATS[fmt].parse(text).dumps() == text
