"""Rockchip rknn-toolkit v1 (RK1808 / RV1126) `customized_quantize_layers` lists.

Keys are acuity layer names `<OpType>_<onnx node>_<id>` (optionally `..._acuity_mark_perm_<n>` for the
permute layers acuity inserts), values a quantized dtype such as `dynamic_fixed_point-i16`. Reading maps
keys back to ONNX nodes by op type and name; promotion edits the text like the rknn2 module does.
"""

from __future__ import annotations

import re

import yaml

from qdebug.errors import FormatError
from qdebug.formats.base import MappingReport, PromotionResult, VendorFile, register_format
from qdebug.formats.rknn_yaml import (
    check_printable,
    child_indent,
    compose,
    has_top_key,
    line_of,
    mapping_items,
    render_entry,
    set_block_entries,
)
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QuantConfig

KEY = "customized_quantize_layers"
QTYPES = {
    "asymmetric_affine-u8": Precision.INT8,
    "asymmetric_quantized-u8": Precision.INT8,
    "dynamic_fixed_point-i8": Precision.INT8,
    "dynamic_fixed_point-i16": Precision.INT16,
    "float32": Precision.FP32,
    "float16": Precision.FP16,
    "bfloat16": Precision.FP16,
}
WRITE = {Precision.INT16: "dynamic_fixed_point-i16", Precision.FP16: "float32", Precision.FP32: "float32"}
_SUFFIX = re.compile(r"(\d+)(_acuity_mark_perm_\d+)?")


def match_node(key: str, graph: ModelGraph) -> str | None:
    """The ONNX node an acuity key `<OpType>_<node>_<id>` names, or None."""
    for node in graph.nodes:
        prefix = f"{node.op_type}_{node.name}_"
        if key.startswith(prefix) and _SUFFIX.fullmatch(key[len(prefix):]):
            return node.name
    return None


def acuity_key(graph: ModelGraph, node: str) -> str:
    """Best guess of acuity's key for a node: ids count layers from the output back (output layer = 1)."""
    n = graph.node_by_name[node]
    return f"{n.op_type}_{n.name}_{len(graph.nodes) - graph.index_of[node]}"


@register_format
class Rknn1QuantizeLayers(VendorFile):
    """rknn-toolkit v1 hybrid-quantization file with a `customized_quantize_layers` section."""

    format = "rknn1"
    description = "Rockchip rknn-toolkit v1 customized_quantize_layers (YAML)"
    default_suffix = ".yaml"
    profile = "rknn"

    def __init__(self, path: str | None, text: str, node: yaml.Node, layers: dict[str, str],
                 lines: dict[str, int]) -> None:
        super().__init__(path, text)
        self.node = node
        self.layers = layers
        self.lines = lines

    @classmethod
    def sniff(cls, text: str, path: str | None = None) -> bool:
        return has_top_key(text, KEY)

    @classmethod
    def parse(cls, text: str, path: str | None = None) -> Rknn1QuantizeLayers:
        check_printable(text, path)
        node = compose(text, path)
        if not isinstance(node, yaml.MappingNode):
            raise FormatError("top level is not a YAML mapping", file=path,
                              where=line_of(node) if node is not None else "line 1",
                              fix=f"give the file with the `{KEY}:` section")
        items = {str(k.value): (k, v) for k, v in mapping_items(node)}
        if KEY not in items:
            raise FormatError(f"missing `{KEY}`", file=path, where="line 1",
                              fix=f"add `{KEY}: {{}}` or give the toolkit's hybrid quantization file")
        kn, vn = items[KEY]
        if not (isinstance(vn, yaml.MappingNode) or (isinstance(vn, yaml.ScalarNode) and vn.tag.endswith(":null"))):
            raise FormatError(f"`{KEY}` must be a mapping", file=path, where=line_of(kn), fix=f"write `{KEY}: {{}}`")
        layers: dict[str, str] = {}
        lines: dict[str, int] = {}
        for k, v in mapping_items(vn):
            name = str(k.value)
            val = str(v.value) if isinstance(v, yaml.ScalarNode) else ""
            if val not in QTYPES:
                raise FormatError(f"unknown quantized dtype {val[:40]!r} for '{name}'", file=path, where=line_of(v),
                                  fix="use dynamic_fixed_point-i16, dynamic_fixed_point-i8, asymmetric_affine-u8 "
                                  "or float32")
            layers[name] = val
            lines[name] = k.start_mark.line + 1
        return cls(path, text, node, layers, lines)

    def dumps(self) -> str:
        return self.text

    def to_config(self, graph: ModelGraph, base: QuantConfig) -> tuple[QuantConfig, MappingReport]:
        cfg = self.start_config(base, "rknn1")
        rep = MappingReport(notes=["rknn-toolkit v1 files carry precisions only; activation ranges are "
                                   "calibrated by qdebug"])
        for key, val in self.layers.items():
            node = match_node(key, graph)
            if node is None:
                rep.unmatched_records.append(key)
                continue
            rep.matched.append(key)
            prec = QTYPES[val]
            if prec != Precision.INT8:
                old = cfg.overrides.get(node)
                cfg.overrides[node] = prec if old is None or prec.rank > old.rank else old
        return cfg, rep

    def promote(self, layers: list[str], dtype: Precision, graph: ModelGraph | None = None,
                donor: VendorFile | None = None) -> PromotionResult:
        if donor is not None:
            raise FormatError("--from16 is for HiSilicon calibration files", file=donor.path, fix="drop --from16")
        if graph is None:
            raise FormatError("rknn-toolkit v1 keys need each node's op type", file=self.path,
                              fix="pass the ONNX model with --model")
        if dtype not in WRITE:
            raise FormatError(f"cannot promote to {dtype.value}", file=self.path, fix="use --dtype int16")
        value = WRITE[dtype]
        notes: list[str] = []
        if dtype == Precision.FP16:
            notes.append("rknn-toolkit v1 has no float16 layer type: wrote float32")
        by_node: dict[str, list[str]] = {}
        for key in self.layers:
            node = match_node(key, graph)
            if node is not None:
                by_node.setdefault(node, []).append(key)
        entries: list[tuple[str, str]] = []
        guessed: list[str] = []
        for name in layers:
            node = graph.resolve_node(name, error=FormatError)
            keys = by_node.get(node) or [acuity_key(graph, node)]
            if node not in by_node:
                guessed.append(keys[0])
            entries += [(k, value) for k in keys if k not in dict(entries)]
        if guessed:
            notes.append("new keys use acuity's `<OpType>_<node>_<id>` naming with the id guessed as the layer's "
                         "position counted from the output; check them against the layer names the toolkit "
                         "printed (or its .json/.quantize file): " + ", ".join(guessed))
        items = {str(k.value): (k, v) for k, v in mapping_items(self.node)}
        kn, vn = items[KEY]
        text = set_block_entries(self.text, kn, vn, child_indent(vn, self.text), entries, self.path)
        Rknn1QuantizeLayers.parse(text, self.path)
        changed = [k for k, v in entries if self.layers.get(k) != v]
        return PromotionResult(text=text, changed=changed, notes=notes,
                               extra={"rknn1_layers": "\n".join(render_entry(k, v) for k, v in entries)})
