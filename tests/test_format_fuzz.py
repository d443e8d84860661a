"""Fuzz the vendor-file parsers with mutated real-shaped files: they may only ever raise FormatError.

A mutated file that still parses must round-trip byte for byte, map onto the model and accept a
promotion (or refuse it with FormatError) without any other exception.
"""

from __future__ import annotations

import functools
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.vendor import make_hisi_calibration, make_rknn1_layers, make_rknn_cfg, yolov8_bundle
from qdebug.errors import FormatError
from qdebug.formats.base import FORMATS
from qdebug.formats.hisi import HisiCalibration
from qdebug.formats.rknn1 import Rknn1QuantizeLayers
from qdebug.formats.rknn2 import RknnQuantCfg
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QuantConfig

TEXT = Path(__file__).resolve().parents[1] / "fixtures" / "text"
CHARS = "{}<>:;,[]\"'#\n\t -+.0123456789eExX_abcSUF\\/|&*!%@`?é"
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


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
def _bases() -> dict[str, str]:
    model, _, ranges = yolov8_bundle()
    hisi = make_hisi_calibration(model, ranges)
    tail = hisi[hisi.index('layer {\n  name: "/model.22/Concat_4"'):]
    return {
        "hisi": _head(hisi, "layer {", 6) + tail + (TEXT / "hisi_minimal.txt").read_text(),
        "rknn": _head(make_rknn_cfg(model, ranges), "    /model.1", 1) + "    output0_int8:\n        dtype: int8\n"
                "        qmethod: layer\n        scale:\n        -   0.5\n        zero_point:\n        -   -3\n",
        "rknn1": make_rknn1_layers(model, ["/model.22/Mul_2", "/model.0/conv/Conv"]),
    }


@st.composite
def mutated(draw: st.DrawFn, fmt: str) -> str:
    text = _bases()[fmt]
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["del", "dup", "ins", "del_line", "dup_line", "swap_lines", "ins_line"]))
        if kind in ("del", "dup", "ins"):
            i = draw(st.integers(0, max(len(text) - 1, 0)))
            if kind == "del":
                text = text[:i] + text[i + 1:]
            elif kind == "dup":
                text = text[:i] + text[i:i + 1] + text[i:]
            else:
                text = text[:i] + draw(st.text(alphabet=CHARS, min_size=1, max_size=4)) + text[i:]
            continue
        lines = text.splitlines(keepends=True)
        if not lines:
            continue
        i = draw(st.integers(0, len(lines) - 1))
        if kind == "del_line":
            del lines[i]
        elif kind == "dup_line":
            lines.insert(i, lines[i])
        elif kind == "swap_lines":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines.insert(i, draw(st.sampled_from(lines)))
        text = "".join(lines)
    return text


def _exercise(cls: type, text: str, promote_graph: bool) -> None:
    for c in FORMATS.values():
        c.sniff(text, "f")
    try:
        vf = cls.parse(text, "f")
    except FormatError as exc:
        assert exc.file == "f"
        assert exc.where is None or exc.where.startswith("line ")
        assert "\n" not in exc.one_line()
        return
    assert vf.dumps() == text
    vf.to_config(_graph(), QuantConfig())
    names = {"hisi": lambda: [ly.name for ly in vf.layers], "rknn": lambda: list(vf.params),
             "rknn1": lambda: ["/model.22/Mul_2"]}[cls.format]()
    for dtype in (Precision.INT16, Precision.FP16):
        try:
            res = vf.promote(names[:2], dtype, graph=_graph() if promote_graph else None)
        except FormatError:
            continue
        assert cls.parse(res.text, "f").dumps() == res.text


@SETTINGS
@given(mutated("hisi"))
def test_fuzz_hisi(text: str) -> None:
    _exercise(HisiCalibration, text, False)


@SETTINGS
@given(mutated("rknn"))
def test_fuzz_rknn2(text: str) -> None:
    _exercise(RknnQuantCfg, text, True)


@SETTINGS
@given(mutated("rknn1"))
def test_fuzz_rknn1(text: str) -> None:
    _exercise(Rknn1QuantizeLayers, text, True)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.text(alphabet=CHARS + "abcdefghijklmnopqrstuvwxyz", max_size=200))
def test_fuzz_random_text(text: str) -> None:
    for cls in (HisiCalibration, RknnQuantCfg, Rknn1QuantizeLayers):
        try:
            cls.parse(text, "f")
        except FormatError:
            pass


def test_bases_are_valid() -> None:
    for fmt, text in _bases().items():
        cls = {"hisi": HisiCalibration, "rknn": RknnQuantCfg, "rknn1": Rknn1QuantizeLayers}[fmt]
        assert cls.parse(text).dumps() == text
