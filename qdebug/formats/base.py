"""Vendor file formats behind one small interface, registered in one place.

A format module defines a `VendorFile` subclass and decorates it with `@register_format`. It reads a
vendor file into the simulator's QuantConfig (precision overrides + pinned parameters) and writes a
patched copy that keeps a promotion set at higher precision. A new vendor is one new module plus one
import line in `qdebug/formats/__init__.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from qdebug.errors import FormatError
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QuantConfig


@dataclass
class MappingReport:
    """How a vendor file's records matched the model (unmatched records are reported, never fatal)."""

    matched: list[str] = field(default_factory=list)  # record names matched to ONNX nodes/tensors
    unmatched_records: list[str] = field(default_factory=list)  # in the file, not in the model
    nodes_without_record: list[str] = field(default_factory=list)  # quantized ops the file does not cover
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"matched": len(self.matched), "unmatched_records": self.unmatched_records,
                "nodes_without_record": self.nodes_without_record, "notes": self.notes}


@dataclass
class PromotionResult:
    """A patched vendor file (text) plus what changed and what to tell the user."""

    text: str
    changed: list[str]  # record / key names changed or added
    notes: list[str] = field(default_factory=list)  # e.g. "derived S16 from the 8-bit range"
    extra: dict[str, str] = field(default_factory=dict)  # e.g. {"atc_option": "--high_precision_layer=..."}


class VendorFile(ABC):
    """A parsed vendor calibration/config file that keeps its original text for byte-exact round trips."""

    format: ClassVar[str] = "?"  # the prefix users type: hisi, rknn, rknn1...
    description: ClassVar[str] = ""
    default_suffix: ClassVar[str] = ".txt"
    profile: ClassVar[str] = "generic"  # simulator profile that matches this vendor's quantization points

    def __init__(self, path: str | None, text: str) -> None:
        self.path = path
        self.text = text

    @classmethod
    @abstractmethod
    def sniff(cls, text: str, path: str | None = None) -> bool:
        """True when `text` looks like this format (used for auto-detection)."""

    @classmethod
    @abstractmethod
    def parse(cls, text: str, path: str | None = None) -> VendorFile:
        """Parse text; raise FormatError naming path, line and problem on malformed input."""

    @abstractmethod
    def dumps(self) -> str:
        """Serialize; for an unmodified file this returns the original text byte for byte."""

    @abstractmethod
    def to_config(self, graph: ModelGraph, base: QuantConfig) -> tuple[QuantConfig, MappingReport]:
        """The simulator config that reproduces this file's quantization on `graph`."""

    def start_config(self, base: QuantConfig, prefix: str) -> QuantConfig:
        """A copy of `base` with its own override and parameter maps, for `to_config` to pin this file's values
        into; its source names the file (`prefix:path`)."""
        return QuantConfig(scheme=base.scheme, overrides=dict(base.overrides), act_params=dict(base.act_params),
                           weight_params=dict(base.weight_params), compute_fp16=base.compute_fp16,
                           source=f"{prefix}:{self.path}" if self.path else prefix)

    @abstractmethod
    def promote(self, layers: list[str], dtype: Precision, graph: ModelGraph | None = None,
                donor: VendorFile | None = None) -> PromotionResult:
        """A patched copy keeping `layers` (ONNX node names) at `dtype`; `donor` is a 16-bit file to copy from."""


FORMATS: dict[str, type[VendorFile]] = {}


def register_format(cls: type[VendorFile]) -> type[VendorFile]:
    """Class decorator: make a format available as `PREFIX:path` and to auto-detection."""
    FORMATS[cls.format] = cls
    return cls


def split_spec(spec: str) -> tuple[str | None, str]:
    """'hisi:out/calib.txt' -> ('hisi', 'out/calib.txt'); a plain path -> (None, path)."""
    import qdebug.formats  # noqa: F401  (registers the built-in formats)

    head, sep, tail = spec.partition(":")
    if sep and head in FORMATS:
        return head, tail
    return None, spec


def decode_text(data: bytes, path: str | None = None) -> str:
    """The file's text, exactly (no newline translation, a byte order mark kept): UTF-8 only."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = 1 + data.count(b"\n", 0, exc.start)
        raise FormatError(f"not UTF-8 text (byte {exc.start})", file=path, where=f"line {line}",
                          fix="give the text file the vendor toolchain wrote (UTF-8)") from None


def load_vendor_file(spec: str) -> VendorFile:
    """Open `FORMAT:PATH` (or a bare path, auto-detected) as a VendorFile."""
    fmt, path = split_spec(spec)
    known = ", ".join(f + ":" for f in sorted(FORMATS))
    head, sep, _ = spec.partition(":")
    if fmt is None and sep and len(head) > 1 and head.isalnum() and not Path(spec).exists():
        raise FormatError(f"unknown format '{head}:'", file=spec, fix=f"prefix the path with one of {known}")
    if not path:
        raise FormatError("no file after the format prefix", file=spec, fix=f"write FORMAT:PATH with one of {known}")
    p = Path(path)
    if p.is_dir():
        raise FormatError("is a folder, not a calibration/config file", file=path, fix="give the file inside it")
    if not p.is_file():
        raise FormatError("calibration/config file not found", file=path, fix="check the path")
    text = decode_text(p.read_bytes(), path)
    if fmt is None:
        matches = [c for c in FORMATS.values() if c.sniff(text, path)]
        if not matches:
            raise FormatError("cannot tell the file format from its content", file=path,
                              fix=f"prefix the path with a format: {', '.join(f + ':' for f in sorted(FORMATS))}")
        cls = matches[0]
    else:
        cls = FORMATS[fmt]
    return cls.parse(text, path)
