"""Rockchip rknn-toolkit2 hybrid-quantization `.quantization.cfg` (YAML from `hybrid_quantization_step1`).

Data is read with PyYAML (safe loader); edits are made on the text so key order, the 4-space indent and
the `-   value` list style stay as the toolkit wrote them (the toolkit byte-compares saved scales, so a
YAML re-dump is not acceptable). Promotion only adds `tensor: int16|float16` under
`custom_quantize_layers`; `dtype` inside `quantize_parameters` is never touched (the toolkit rejects that).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field

import numpy as np
import yaml

from qdebug.errors import FormatError
from qdebug.formats.base import MappingReport, PromotionResult, VendorFile, register_format
from qdebug.graph.fusion import build_quant_ops, group_of
from qdebug.graph.model import ModelGraph
from qdebug.quant.profiles import get_profile
from qdebug.quant.scheme import Precision, QParams, QuantConfig

DTYPES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
FLOAT_DTYPES = {"float16": Precision.FP16, "float32": Precision.FP32}
# non-float tensors (shape constants, indices) the toolkit also lists; kept verbatim, not simulated
OTHER_DTYPES = {"int32", "int64", "uint16", "uint32", "bool", "float64"}
TWIN_SUFFIXES = ("_int8", "_int16", "_uint8")  # toolkit's quantized copy of a float boundary tensor
TOOLKIT_SUFFIXES = ("-rs", "_rs")  # rknn-toolkit2 2.x names of tensors it reshaped to 4-D
CUSTOM_VALUES = {Precision.INT16: "int16", Precision.FP16: "float16"}
CUSTOM_KEY = "custom_quantize_layers"
PARAMS_KEY = "quantize_parameters"


# ------------------------------------------------------------------ YAML text helpers (shared with rknn1)
def compose_yaml(text: str, path: str | None, fix: str) -> tuple[yaml.MappingNode, dict]:
    """Parse a YAML mapping once into (node tree with line marks, constructed data); errors, and a top level
    that is not a mapping (`fix` says what to give instead), become FormatError."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}" if mark is not None else None
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        if exc.context and exc.context_mark is not None and exc.problem_mark is not None \
                and exc.context_mark.line != exc.problem_mark.line:
            problem += f" ({exc.context.strip()} on line {exc.context_mark.line + 1})"
        raise FormatError(f"invalid YAML: {problem}", file=path, where=where,
                          fix="restore the file the toolkit wrote and edit only custom_quantize_layers") from None
    except (yaml.YAMLError, RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise FormatError(f"invalid YAML ({type(exc).__name__})", file=path,
                          fix="restore the file the toolkit wrote") from None
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise FormatError("top level is not a YAML mapping", file=path,
                          where=line_of(node) if node is not None else "line 1", fix=fix)
    return node, data


def mapping_items(node: yaml.Node | None) -> list[tuple[yaml.Node, yaml.Node]]:
    """(key node, value node) pairs of a mapping node ([] for anything else)."""
    return list(node.value) if isinstance(node, yaml.MappingNode) else []


def line_of(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}"


def render_entry(key: str, value: str) -> str:
    """`key: value` with YAML quoting where the key needs it (e.g. names with ': ' or a leading '*')."""
    return yaml.safe_dump({key: value}, default_flow_style=False, width=1 << 30, allow_unicode=True).rstrip("\n")


def child_indent(node: yaml.Node | None, text: str, default: int = 4) -> int:
    """Indent used for the children of a block mapping (the toolkit uses 4)."""
    items = mapping_items(node)
    if items and not getattr(node, "flow_style", False):
        return items[0][0].start_mark.column
    return default


def set_block_entries(text: str, key_node: yaml.Node, value_node: yaml.Node, indent: int,
                      entries: list[tuple[str, str]]) -> str:
    """Add/replace `key: value` entries of a top-level mapping, editing only that mapping's text.

    A flow mapping (`{}`) or an empty value becomes a block mapping; existing block entries keep their
    text; a key that exists gets only its value scalar replaced.
    """
    pad = " " * indent
    wanted = dict(entries)
    flow = isinstance(value_node, yaml.MappingNode) and bool(value_node.flow_style)
    null = isinstance(value_node, yaml.ScalarNode) and value_node.tag.endswith(":null")
    if flow or null:
        old = [(str(k.value), str(v.value)) for k, v in mapping_items(value_node)]
        merged = [(k, wanted.get(k, v)) for k, v in old] + [(k, v) for k, v in entries if k not in dict(old)]
        block = "\n".join(pad + render_entry(k, v) for k, v in merged)
        a, b = value_node.start_mark.index, value_node.end_mark.index
        while a > key_node.end_mark.index and text[a - 1] in " \t":
            a -= 1
        eol = text.find("\n", b)
        if eol < 0:
            return text[:a] + text[b:] + "\n" + block + "\n"
        return text[:a] + text[b:eol] + "\n" + block + text[eol:]
    existing = {str(k.value): v for k, v in mapping_items(value_node)}
    edits: list[tuple[int, int, str]] = []
    new_lines: list[str] = []
    for k, v in entries:
        if k in existing:
            vn = existing[k]
            if str(vn.value) != v:
                edits.append((vn.start_mark.index, vn.end_mark.index, v))
        else:
            new_lines.append(pad + render_entry(k, v))
    if new_lines:
        items = mapping_items(value_node)
        if not items:
            raise FormatError("cannot add entries to a non-mapping section", where=line_of(key_node),
                              fix="write `" + str(key_node.value) + ": {}`")
        last = items[-1][1]
        pos = last.end_mark.index
        if isinstance(last, yaml.ScalarNode):
            eol = text.find("\n", pos)
        else:  # a nested block ends at the start of the next line
            eol = pos - 1 if pos > 0 and text[pos - 1] == "\n" else text.find("\n", pos)
        ins = "\n" + "\n".join(new_lines)
        edits.append((len(text), len(text), ins + "\n") if eol < 0 else (eol, eol, ins))
    for a, b, rep in sorted(edits, reverse=True):
        text = text[:a] + rep + text[b:]
    return text


# ------------------------------------------------------------------ records
@dataclass
class TensorParams:
    """One `quantize_parameters` entry."""

    name: str
    dtype: str
    qmethod: str
    scale: list[float]
    zero_point: list[int]
    min: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)
    line: int = 0

    @property
    def is_int(self) -> bool:
        return self.dtype in DTYPES

    def qparams(self) -> QParams | None:
        """x = (q - zero_point) * scale, clipped to the dtype's range; per channel (axis 1) for qmethod channel."""
        if not self.is_int or not self.scale:
            return None
        qmin, qmax = DTYPES[self.dtype]
        s = np.asarray(self.scale, dtype=np.float64)
        zp = self.zero_point or [0]
        z = np.asarray(zp if len(zp) == len(s) else [zp[0]] * len(s), dtype=np.int64)
        axis = 1 if s.size > 1 else None
        return QParams(s, z, qmin, qmax, axis)


def _nums(node_val: object, what: str, name: str, where: str, path: str | None) -> list[float]:
    if node_val is None:
        return []
    vals = node_val if isinstance(node_val, list) else [node_val]
    out = []
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise FormatError(f"{name}: {what} must be numbers, got {v!r}", file=path, where=where,
                              fix="restore the values the toolkit wrote")
        out.append(float(v))
    return out


@register_format
class RknnQuantCfg(VendorFile):
    """rknn-toolkit2 `{name}.quantization.cfg` (hybrid quantization step 1 output)."""

    format = "rknn"
    description = "Rockchip rknn-toolkit2 hybrid-quantization .quantization.cfg (YAML)"
    default_suffix = ".quantization.cfg"
    profile = "rknn"

    def __init__(self, path: str | None, text: str, node: yaml.Node, params: dict[str, TensorParams],
                 custom: dict[str, str]) -> None:
        super().__init__(path, text)
        self.node = node
        self.params = params
        self.custom = custom

    @classmethod
    def sniff(cls, text: str, path: str | None = None) -> bool:
        return cls is RknnQuantCfg and bool(re.search(r"^quantize_parameters\s*:", text, re.M))

    @classmethod
    def parse(cls, text: str, path: str | None = None) -> RknnQuantCfg:
        node, data = compose_yaml(text, path, fix="give the .quantization.cfg written by hybrid_quantization_step1")
        keys = {str(k.value): (k, v) for k, v in mapping_items(node)}
        if PARAMS_KEY not in keys:
            raise FormatError(f"missing `{PARAMS_KEY}`", file=path, where="line 1",
                              fix="give the .quantization.cfg written by hybrid_quantization_step1")
        pk, pv = keys[PARAMS_KEY]
        if not isinstance(pv, yaml.MappingNode):
            raise FormatError(f"`{PARAMS_KEY}` is not a mapping of tensor names", file=path, where=line_of(pk),
                              fix="restore the section the toolkit wrote")
        params: dict[str, TensorParams] = {}
        for kn, vn in mapping_items(pv):
            tp = _tensor(kn, vn, path)
            params[tp.name] = tp
        custom: dict[str, str] = {}
        if CUSTOM_KEY in keys:
            ck, cv = keys[CUSTOM_KEY]
            if not (isinstance(cv, yaml.MappingNode) or (isinstance(cv, yaml.ScalarNode) and cv.tag.endswith(":null"))):
                raise FormatError(f"`{CUSTOM_KEY}` must be a mapping (`{{}}` when empty)", file=path,
                                  where=line_of(ck), fix=f"write `{CUSTOM_KEY}: {{}}`")
            for kn, vn in mapping_items(cv):
                name, val = str(kn.value), str(vn.value)
                if not isinstance(vn, yaml.ScalarNode) or val not in ("int8", "int16", "float16", "float32"):
                    raise FormatError(f"unknown dtype {val!r} for '{name}' in {CUSTOM_KEY}", file=path,
                                      where=line_of(vn), fix="use int16 or float16")
                if name not in params:
                    raise FormatError(f"Invalid operands name '{name}' in {CUSTOM_KEY}!", file=path,
                                      where=line_of(kn), fix="keys must be tensor names listed under "
                                      f"{PARAMS_KEY}{_suggest(name, params)}")
                custom[name] = val
        return cls(path, text, node, params, custom)

    def dumps(self) -> str:
        return self.text

    # ------------------------------------------------------------ simulate
    def to_config(self, graph: ModelGraph, base: QuantConfig) -> tuple[QuantConfig, MappingReport]:
        cfg = QuantConfig(scheme=base.scheme, overrides=dict(base.overrides), act_params=dict(base.act_params),
                          weight_params=dict(base.weight_params), compute_fp16=base.compute_fp16,
                          source=f"rknn:{self.path}" if self.path else "rknn")
        rep = MappingReport()
        ops = build_quant_ops(graph, fuse=get_profile(self.profile).fuse)
        groups = group_of(ops)
        inputs = {i.name for i in graph.inputs}
        quant_points = {t: op for op in ops if op.kind in ("compute", "input") for t in op.outputs}
        covered: set[str] = set()
        internal = 0

        def owner(tensor: str) -> str | None:
            if tensor in inputs:
                return tensor
            node = graph.producer.get(tensor)
            if node is None:
                return None
            op = groups.get(node.name)
            return op.key if op is not None else node.name

        for name, tp in self.params.items():
            tensor = self.tensor_of(name, graph)
            if tensor is None:
                rep.unmatched_records.append(name)
                continue
            rep.matched.append(name)
            key = owner(tensor)
            if tp.is_int:
                if tensor in quant_points:
                    qp = tp.qparams()
                    if qp is not None:
                        cfg.act_params[tensor] = qp
                    covered.add(quant_points[tensor].key)
                    if tp.dtype == "int16" and key is not None:
                        cfg.overrides[key] = Precision.INT16
                else:
                    internal += 1
            elif tp.dtype in FLOAT_DTYPES and not self.twin(name) and key is not None:
                if tensor in quant_points:
                    covered.add(quant_points[tensor].key)
                    cfg.overrides[key] = FLOAT_DTYPES[tp.dtype]
        for name, val in self.custom.items():
            tensor = self.tensor_of(name, graph)
            key = owner(tensor) if tensor is not None else None
            if key is None:
                rep.notes.append(f"{CUSTOM_KEY}: '{name}' matches no tensor of the model; ignored")
                continue
            prec = Precision.parse(val)
            old = cfg.overrides.get(key)
            cfg.overrides[key] = prec if old is None or prec.rank > old.rank else old
        for op in ops:
            if op.kind in ("compute", "input") and op.key not in covered:
                rep.nodes_without_record.append(op.key)
        if internal:
            rep.notes.append(f"{internal} entr(ies) describe tensors inside a fused op or after a range-preserving "
                             "op; the fused op's output entry is used")
        return cfg, rep

    def custom_precisions(self, graph: ModelGraph) -> dict[str, Precision]:
        """`custom_quantize_layers` as {producing node: precision} (entries matching no tensor are left out),
        e.g. to score the toolkit's own proposal with qdebug's evaluator."""
        out: dict[str, Precision] = {}
        for tensor, value in self.custom.items():
            t = self.tensor_of(tensor, graph)
            node = graph.producer.get(t) if t else None
            if node is not None:
                out[node.name] = Precision.parse(value)
        return out

    def twin(self, name: str) -> str | None:
        """The toolkit's quantized twin of a float boundary tensor (`images` -> `images_int8`)."""
        return next((name + s for s in TWIN_SUFFIXES if name + s in self.params), None)

    def tensor_of(self, name: str, graph: ModelGraph) -> str | None:
        """The model tensor an entry describes (`images_int8` -> `images`), None if not in the model."""
        known = set(graph.producer) | {i.name for i in graph.inputs}
        if name in known:
            return name
        for s in (*TWIN_SUFFIXES, *TOOLKIT_SUFFIXES):
            if name.endswith(s) and name[: -len(s)] in known:
                return name[: -len(s)]
        return None

    # ------------------------------------------------------------- promote
    def tensor_key(self, name: str, graph: ModelGraph | None) -> tuple[str, str | None]:
        """Translate a user's node or tensor name into a tensor key of the file (key, how it was found)."""
        if graph is not None and name in {i.name for i in graph.inputs}:
            raise FormatError(f"Invalid operands name '{name}' in {CUSTOM_KEY}!", file=self.path,
                              fix="a graph input cannot be promoted in the hybrid cfg (the toolkit rejects it); "
                              "promote the first layer instead")
        if name in self.params:
            return name, None
        cands: list[str] = []
        if graph is not None:
            node = graph.node_by_name.get(name)
            if node is not None:
                groups = group_of(build_quant_ops(graph, fuse=get_profile(self.profile).fuse))
                op = groups.get(name)
                cands += (op.outputs if op is not None else []) + [o for o in node.output if o]
            elif name in graph.producer or name in {i.name for i in graph.inputs}:
                cands.append(name)
        cands += [f"{name}_output_0"]
        # the toolkit computes a reshaped tensor as `<name>-rs` (the plain name is then only the float
        # boundary copy), and adds `_int8` twins for float tensors: prefer the computed tensor
        cands = [c + s for c in cands for s in (*TOOLKIT_SUFFIXES, "", *TWIN_SUFFIXES)]
        for c in cands:
            if c in self.params:
                return c, f"node '{name}' -> tensor '{c}'"
        raise FormatError(f"Invalid operands name '{name}' in {CUSTOM_KEY}!", file=self.path,
                          fix="give an ONNX node name (with --model) or a tensor key of "
                          f"{PARAMS_KEY}{_suggest(name, self.params)}")

    def promote(self, layers: list[str], dtype: Precision, graph: ModelGraph | None = None,
                donor: VendorFile | None = None) -> PromotionResult:
        if donor is not None:
            raise FormatError("--from16 is for HiSilicon calibration files", file=donor.path,
                              fix="for RKNN, promotion is a custom_quantize_layers entry; drop --from16")
        if dtype not in CUSTOM_VALUES:
            raise FormatError(f"rknn-toolkit2 {CUSTOM_KEY} takes int16 or float16, not {dtype.value}",
                              file=self.path, fix="use --dtype int16 or --dtype fp16")
        value = CUSTOM_VALUES[dtype]
        entries: list[tuple[str, str]] = []
        notes: list[str] = []
        for name in layers:
            key, how = self.tensor_key(name, graph)
            if how:
                notes.append(how)
            if key not in dict(entries):
                entries.append((key, value))
            base = next((key[: -len(sfx)] for sfx in TOOLKIT_SUFFIXES if key.endswith(sfx)), None)
            outputs = {o.name for o in graph.outputs} if graph is not None else set()
            if base is not None and base in self.params and base in outputs and base not in dict(entries):
                # a graph output: `X-rs` is the op's result, `X` the output conversion; without the second
                # entry the toolkit requantizes the int16 result back to the int8 output grid
                entries.append((base, value))
                notes.append(f"'{base}' is a graph output: promoted its output conversion too")
        changed = [k for k, v in entries if self.custom.get(k) != v]
        text = self.text
        items = {str(k.value): (k, v) for k, v in mapping_items(self.node)}
        indent = child_indent(items[PARAMS_KEY][1], text)
        if CUSTOM_KEY in items:
            kn, vn = items[CUSTOM_KEY]
            text = set_block_entries(text, kn, vn, indent, entries)
        else:
            block = f"{CUSTOM_KEY}:\n" + "".join(" " * indent + render_entry(k, v) + "\n" for k, v in entries)
            text = block + text
            notes.append(f"added the missing `{CUSTOM_KEY}` section at the top")
        new = RknnQuantCfg.parse(text, self.path)
        if _params_text(new) != _params_text(self):
            raise AssertionError("internal error: quantize_parameters changed")  # pragma: no cover
        notes.append(f"pass the patched file to hybrid_quantization_step2(model_quantization_cfg=...); keys are "
                     f"tensor names, values {value}")
        return PromotionResult(text=text, changed=changed, notes=notes,
                               extra={"rknn_custom": "\n".join(render_entry(k, v) for k, v in entries)})


@register_format
class Rknn2QuantCfg(RknnQuantCfg):
    """Alias prefix `rknn2:` for the same file (auto-detection uses `rknn`)."""

    format = "rknn2"


def _params_text(f: RknnQuantCfg) -> str:
    items = {str(k.value): (k, v) for k, v in mapping_items(f.node)}
    k, v = items[PARAMS_KEY]
    return f.text[k.start_mark.index: v.end_mark.index]


def _suggest(name: str, keys) -> str:
    close = difflib.get_close_matches(name, list(keys), n=3, cutoff=0.5)
    return ("; did you mean " + ", ".join(close)) if close else ""


def _tensor(kn: yaml.Node, vn: yaml.Node, path: str | None) -> TensorParams:
    name = str(kn.value)
    where = line_of(kn)
    if not isinstance(vn, yaml.MappingNode):
        raise FormatError(f"entry '{name}' is not a mapping", file=path, where=where,
                          fix="restore the entry the toolkit wrote")
    fields = {str(k.value): v for k, v in mapping_items(vn)}

    def val(key: str) -> object:
        node = fields.get(key)
        if node is None:
            return None
        if isinstance(node, yaml.SequenceNode):
            out = []
            for item in node.value:
                if not isinstance(item, yaml.ScalarNode):
                    raise FormatError(f"{name}: {key} must be a list of numbers", file=path, where=line_of(item),
                                      fix="restore the values the toolkit wrote")
                out.append(_scalar(item))
            return out
        if isinstance(node, yaml.ScalarNode):
            return _scalar(node)
        raise FormatError(f"{name}: {key} must be a value or a list", file=path, where=line_of(node),
                          fix="restore the values the toolkit wrote")

    dtype = str(val("dtype") or "int8")
    if dtype not in DTYPES and dtype not in FLOAT_DTYPES and dtype not in OTHER_DTYPES:
        raise FormatError(f"{name}: unknown dtype {dtype!r}", file=path, where=line_of(fields.get("dtype", kn)),
                          fix="the toolkit writes int8, int16, float16 or float32; do not edit dtype")
    qmethod = str(val("qmethod") or "layer")
    if qmethod not in ("layer", "channel"):
        raise FormatError(f"{name}: unknown qmethod {qmethod!r}", file=path,
                          where=line_of(fields.get("qmethod", kn)), fix="use layer or channel")
    swhere = line_of(fields["scale"]) if "scale" in fields else where
    scale = _nums(val("scale"), "scale", name, swhere, path)
    for k, s in enumerate(scale):
        if s <= 0:
            node = fields["scale"]
            w = line_of(node.value[k]) if isinstance(node, yaml.SequenceNode) else swhere
            raise FormatError(f"{name}: scale must be > 0, got {s}", file=path, where=w,
                              fix="restore the toolkit's value (or edit min/max instead)")
    zwhere = line_of(fields["zero_point"]) if "zero_point" in fields else where
    zp = _nums(val("zero_point"), "zero_point", name, zwhere, path)
    if any(z != int(z) for z in zp):
        raise FormatError(f"{name}: zero_point must be integers", file=path, where=zwhere,
                          fix="restore the toolkit's value")
    if dtype in DTYPES:
        if not scale:
            raise FormatError(f"{name}: {dtype} tensor without scale", file=path, where=swhere,
                              fix="restore the toolkit's scale list")
        if len(zp) not in (0, 1, len(scale)):
            raise FormatError(f"{name}: {len(zp)} zero points for {len(scale)} scales", file=path, where=zwhere,
                              fix="give one zero point per scale")
    mn = _nums(val("min"), "min", name, where, path)
    mx = _nums(val("max"), "max", name, where, path)
    return TensorParams(name, dtype, qmethod, scale, [int(z) for z in zp], mn, mx, kn.start_mark.line + 1)


def _scalar(node: yaml.ScalarNode) -> object:
    """A scalar with YAML 1.1 core typing (what safe_load would give)."""
    tag = node.tag
    v = node.value
    try:
        if tag.endswith(":int"):
            return int(v.replace("_", ""), 0) if not re.fullmatch(r"[-+]?0[0-7]+", v) else int(v, 8)
        if tag.endswith(":float"):
            low = v.lower().replace("_", "")
            if low in (".inf", "+.inf"):
                return math.inf
            if low == "-.inf":
                return -math.inf
            if low == ".nan":
                return math.nan
            return float(low)
        if tag.endswith(":null"):
            return None
        if tag.endswith(":bool"):
            return v.lower() in ("yes", "true", "on", "y")
    except ValueError:
        return v
    return v
