"""A generic calibration table (tensor -> range/scale) for stacks that take one instead of a vendor file.

Two layouts, one reader: JSON `{"tensor": {"min": lo, "max": hi, "scale": s}}` (qdebug's table, close to
onnxruntime's calibration table) and TensorRT's calibration cache text (`TRT-<version>-<Calibrator>` then
`tensor: <float32 scale as 8 hex digits>`, scale = max(|min|, |max|) / 127, symmetric int8). The table
carries ranges only (no precision), so `promote` refuses and names the formats that carry both.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping

import numpy as np

from qdebug.errors import FormatError
from qdebug.formats.base import MappingReport, PromotionResult, VendorFile, register_format
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QParams, QuantConfig, params_from_range

TRT_HEADER = "TRT-8601-EntropyCalibration2"
_TRT_HEAD = re.compile(r"^TRT-\d+-\w+\r?$")
_TRT_LINE = re.compile(r"^(.+):\s*([0-9a-fA-F]{8})\r?$")


def range_target(key: str, value: object) -> str:
    """The tensor a range entry is for: a remedy detail names it ({"tensor": ...}), else the key is the tensor."""
    return str(value.get("tensor", key)) if isinstance(value, Mapping) else key


def range_of(value: object, where: str = "") -> tuple[float, float]:
    """(lo, hi) from a (min, max) pair, a per-tensor QParams or a remedy detail entry ({"new": [lo, hi]})."""
    if isinstance(value, QParams):
        lo, hi = value.range()
        if np.size(lo) != 1:
            raise FormatError(f"{where}: a per-channel activation range cannot be written to a per-tensor record",
                              fix="give one (min, max) per tensor")
        return float(np.ravel(lo)[0]), float(np.ravel(hi)[0])
    if isinstance(value, Mapping):
        value = value.get("new", (value.get("min"), value.get("max")))
    try:
        lo, hi = (float(x) for x in value)  # type: ignore[union-attr]
    except (TypeError, ValueError, OverflowError):
        raise FormatError(f"{where}: not a (min, max) range: {str(value)[:60]}",
                          fix="give each tensor two numbers, min and max") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise FormatError(f"{where}: invalid range ({lo}, {hi})", fix="give finite numbers with min <= max")
    return lo, hi


def trt_scale(lo: float, hi: float) -> float:
    """TensorRT's symmetric int8 scale for a range: max(|lo|, |hi|) / 127."""
    return max(abs(lo), abs(hi)) / 127.0


def _hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


@register_format
class CalibTable(VendorFile):
    """A calibration table: JSON (tensor -> min/max/scale) or a TensorRT calibration cache."""

    format = "table"
    description = "calibration table: JSON tensor -> {min, max, scale} or a TensorRT calibration cache"
    default_suffix = ".json"
    profile = "generic"

    def __init__(self, path: str | None, text: str, ranges: dict[str, tuple[float, float]], trt: bool) -> None:
        super().__init__(path, text)
        self.ranges = ranges
        self.trt = trt

    @classmethod
    def sniff(cls, text: str, path: str | None = None) -> bool:
        head = text.lstrip("\ufeff")[:200]
        return bool(_TRT_HEAD.match(head.splitlines()[0] if head else "")) or (
            head.lstrip().startswith("{") and '"min"' in text[:2000] and '"max"' in text[:2000])

    @classmethod
    def parse(cls, text: str, path: str | None = None) -> CalibTable:
        body = text.lstrip("\ufeff")
        lines = body.splitlines()
        if lines and _TRT_HEAD.match(lines[0]):
            out: dict[str, tuple[float, float]] = {}
            for i, ln in enumerate(lines[1:], start=2):
                if not ln.strip():
                    continue
                m = _TRT_LINE.match(ln)
                if m is None:
                    raise FormatError("not a `tensor: hex scale` line", file=path, where=f"line {i}",
                                      fix="each line after the header is `name: 8 hex digits` (float32 scale)")
                s = struct.unpack(">f", bytes.fromhex(m.group(2)))[0]
                if not math.isfinite(s) or s < 0:
                    raise FormatError(f"scale of '{m.group(1)[:60]}' is {s}", file=path, where=f"line {i}",
                                      fix="a TensorRT cache scale is a finite float32 >= 0")
                out[m.group(1)] = (-127.0 * s, 127.0 * s)
            return cls(path, text, out, True)
        try:
            doc = json.loads(body)
        except RecursionError:
            raise FormatError("JSON nested too deeply", file=path, where="line 1",
                              fix="give a flat object tensor -> {min, max}") from None
        except json.JSONDecodeError as exc:
            raise FormatError(f"not JSON: {exc.msg}", file=path, where=f"line {exc.lineno}",
                              fix="give a JSON object tensor -> {min, max} or a TensorRT calibration cache") from None
        if not isinstance(doc, dict):
            raise FormatError("the table is not a JSON object", file=path, where="line 1",
                              fix="write {\"tensor\": {\"min\": lo, \"max\": hi}}")
        out = {}
        for k, v in doc.items():
            try:
                out[k] = range_of(v, f"'{k[:60]}'")
            except FormatError as exc:
                at = body.find(json.dumps(k))
                raise FormatError(exc.problem, file=path, where=f"line {body.count(chr(10), 0, max(at, 0)) + 1}",
                                  fix=exc.fix) from None
        return cls(path, text, out, False)

    def dumps(self) -> str:
        return self.text

    def to_config(self, graph: ModelGraph, base: QuantConfig) -> tuple[QuantConfig, MappingReport]:
        cfg = self.start_config(base, "table")
        rep = MappingReport()
        known = set(graph.producer) | {i.name for i in graph.inputs}
        bits = base.scheme.activation.bits or 8
        for t, (lo, hi) in self.ranges.items():
            if t not in known:
                rep.unmatched_records.append(t)
                continue
            rep.matched.append(t)
            cfg.act_params[t] = params_from_range(lo, hi, bits, symmetric=self.trt or
                                                  base.scheme.symmetric_activations)
        return cfg, rep

    def promote(self, layers: list[str], dtype: Precision, graph: ModelGraph | None = None,
                donor: VendorFile | None = None) -> PromotionResult:
        raise FormatError("a calibration table carries ranges, not precisions", file=self.path,
                          fix="promote through the stack's own option (see the export lists) or a hisi:/rknn: file")

    def write_ranges(self, ranges: Mapping[str, object], graph: ModelGraph | None = None) -> PromotionResult:
        """The table with these tensors' ranges set (entries added when missing); the rest kept as read."""
        new = dict(self.ranges)
        changed = []
        for key, v in ranges.items():
            t = range_target(key, v)
            r = range_of(v, t)
            if new.get(t) != r:
                changed.append(t)
            new[t] = r
        text = render_table(new, trt=self.trt)
        type(self).parse(text, self.path)  # re-read before anyone writes it
        return PromotionResult(text=text, changed=changed,
                               notes=["TensorRT cache scales are symmetric: max(|min|, |max|) / 127"] if self.trt
                               else [])


def render_table(ranges: Mapping[str, tuple[float, float]], trt: bool = False) -> str:
    """The table's text: JSON (sorted keys, min/max/scale) or a TensorRT calibration cache."""
    if trt:
        return TRT_HEADER + "\n" + "".join(f"{t}: {_hex(trt_scale(lo, hi))}\n" for t, (lo, hi) in ranges.items())
    doc = {t: {"min": lo, "max": hi, "scale": (max(hi, 0.0) - min(lo, 0.0)) / 255.0} for t, (lo, hi) in ranges.items()}
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"
