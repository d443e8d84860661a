"""Rockchip rknn-toolkit2 hybrid-quantization `.quantization.cfg` (YAML from `hybrid_quantization_step1`).

Reading is in `rknn2_read.py` (piece by piece, every value checked). Edits are made on the text so key order,
the 4-space indent, the `-   value` list style and the line endings stay as the toolkit wrote them (the
toolkit byte-compares saved scales, so a YAML re-dump is not acceptable). Promotion only adds
`tensor: int16|float16` under `custom_quantize_layers`; `dtype` inside `quantize_parameters` is never
touched (the toolkit rejects that).
"""

from __future__ import annotations

from qdebug.errors import FormatError
from qdebug.formats.base import MappingReport, PromotionResult, VendorFile, register_format
from qdebug.formats.rknn2_read import (  # noqa: F401  (re-exported for the callers of this module)
    CUSTOM_KEY,
    DTYPES,
    FLOAT_DTYPES,
    OTHER_DTYPES,
    PARAMS_KEY,
    CfgData,
    TensorParams,
    read_cfg,
    same_text,
    suggest,
)
from qdebug.formats.rknn_yaml import (  # noqa: F401  (re-exported: rknn1 and older callers import them here)
    child_indent,
    has_top_key,
    line_ending,
    line_of,
    mapping_items,
    render_entry,
    set_block_entries,
)
from qdebug.graph.fusion import build_quant_ops, group_of
from qdebug.graph.model import ModelGraph
from qdebug.quant.profiles import get_profile
from qdebug.quant.scheme import Precision, QuantConfig

TWIN_SUFFIXES = ("_int8", "_int16", "_uint8")  # toolkit's quantized copy of a float boundary tensor
TOOLKIT_SUFFIXES = ("-rs", "_rs")  # rknn-toolkit2 2.x names of tensors it reshaped to 4-D
CUSTOM_VALUES = {Precision.INT16: "int16", Precision.FP16: "float16"}


@register_format
class RknnQuantCfg(VendorFile):
    """rknn-toolkit2 `{name}.quantization.cfg` (hybrid quantization step 1 output)."""

    format = "rknn"
    description = "Rockchip rknn-toolkit2 hybrid-quantization .quantization.cfg (YAML)"
    default_suffix = ".quantization.cfg"
    profile = "rknn"

    def __init__(self, path: str | None, text: str, data: CfgData) -> None:
        super().__init__(path, text)
        self.data = data
        self.params = data.params
        self.custom = data.custom

    @classmethod
    def sniff(cls, text: str, path: str | None = None) -> bool:
        return cls is RknnQuantCfg and has_top_key(text, PARAMS_KEY)

    @classmethod
    def parse(cls, text: str, path: str | None = None) -> RknnQuantCfg:
        return cls(path, text, read_cfg(text, path))

    def dumps(self) -> str:
        return self.text

    # ------------------------------------------------------------ simulate
    def to_config(self, graph: ModelGraph, base: QuantConfig) -> tuple[QuantConfig, MappingReport]:
        cfg = self.start_config(base, "rknn")
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
        self.check_model(graph, rep.matched)
        for op in ops:
            if op.kind in ("compute", "input") and op.key not in covered:
                rep.nodes_without_record.append(op.key)
        if internal:
            rep.notes.append(f"{internal} entr(ies) describe tensors inside a fused op or after a range-preserving "
                             "op; the fused op's output entry is used")
        return cfg, rep

    def check_model(self, graph: ModelGraph, matched: list[str]) -> None:
        """Refuse a cfg written for another model: not one of its quantized tensors is a tensor of this graph."""
        ints = [n for n, tp in self.params.items() if tp.is_int]
        if ints and not any(self.params[n].is_int for n in matched):
            first = self.params[ints[0]]
            raise FormatError(f"none of the {len(ints)} quantized tensors of the cfg is a tensor of the model "
                              f"(e.g. '{first.name}'): it was written for another model", file=self.path,
                              where=f"line {first.line}" if first.line else PARAMS_KEY,
                              fix="run hybrid_quantization_step1 on this model and give its .quantization.cfg")

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
                          f"{PARAMS_KEY}{suggest(name, self.params)}")

    def tensor_keys(self, name: str, graph: ModelGraph | None) -> list[tuple[str, str | None]]:
        """Every tensor key of the file a user's node promotes: each quantization point the toolkit keeps
        inside the node's fused op (a Conv+SiLU owns its conv output and its activation output), else the
        single key `tensor_key` finds. Promoting only the activation output leaves the conv output int8."""
        node = graph.node_by_name.get(name) if graph is not None else None
        op = group_of(build_quant_ops(graph, fuse=get_profile(self.profile).fuse)).get(name) \
            if graph is not None and node is not None else None
        if op is None:
            return [self.tensor_key(name, graph)]
        keys: list[tuple[str, str | None]] = []
        for member in op.nodes:
            for t in graph.node_by_name[member].output:  # type: ignore[union-attr]
                key = next((c for c in (*(t + s for s in TOOLKIT_SUFFIXES), t, *(t + s for s in TWIN_SUFFIXES))
                            if t and c in self.params), None)
                if key is not None and key not in dict(keys):
                    keys.append((key, f"node '{name}' -> tensor '{key}'"))
        return keys or [self.tensor_key(name, graph)]

    def promote(self, layers: list[str], dtype: Precision, graph: ModelGraph | None = None,
                donor: VendorFile | None = None) -> PromotionResult:
        if donor is not None:
            raise FormatError("--from16 is for HiSilicon calibration files", file=donor.path,
                              fix="for RKNN, promotion is a custom_quantize_layers entry; drop --from16")
        if dtype not in CUSTOM_VALUES:
            raise FormatError(f"rknn-toolkit2 {CUSTOM_KEY} takes int16 or float16, not {dtype.value}",
                              file=self.path, fix="use --dtype int16 or --dtype fp16")
        value = CUSTOM_VALUES[dtype]
        if graph is not None:
            self.check_model(graph, [n for n in self.params if self.tensor_of(n, graph) is not None])
        entries: list[tuple[str, str]] = []
        notes: list[str] = []
        for key, how in (kh for n in layers for kh in self.tensor_keys(n, graph)):
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
        text = self.with_custom(entries, notes)
        notes.append(f"pass the patched file to hybrid_quantization_step2(model_quantization_cfg=...); keys are "
                     f"tensor names, values {value}")
        return PromotionResult(text=text, changed=changed, notes=notes,
                               extra={"rknn_custom": "\n".join(render_entry(k, v) for k, v in entries)})

    def with_custom(self, entries: list[tuple[str, str]], notes: list[str] | None = None) -> str:
        """The file's text with these `custom_quantize_layers` entries set verbatim (keys are tensor names of
        the file, e.g. a toolkit proposal replayed as written); `quantize_parameters` stays byte-identical."""
        sections = self.data.sections
        if CUSTOM_KEY in sections:
            sec = sections[CUSTOM_KEY]
            assert sec.key_node is not None and sec.value_node is not None
            text = set_block_entries(self.text, sec.key_node, sec.value_node, self.data.indent, entries, self.path)
        else:
            nl = line_ending(self.text)
            block = f"{CUSTOM_KEY}:{nl}" + "".join(" " * self.data.indent + render_entry(k, v, self.path) + nl
                                                    for k, v in entries)
            at = 1 if self.text.startswith("\ufeff") else 0
            text = self.text[:at] + block + self.text[at:]
            if notes is not None:
                notes.append(f"added the missing `{CUSTOM_KEY}` section at the top")
        new = read_cfg(text, self.path, reuse=self.data, reuse_text=self.text)
        if not _same_params_text(text, new, self.text, self.data):
            raise AssertionError("internal error: quantize_parameters changed")  # pragma: no cover
        return text

    # ------------------------------------------------ ranges (issue #17: bisect --remedies -o writes them)
    def write_ranges(self, ranges: dict, graph: ModelGraph | None = None) -> PromotionResult:
        """A copy with these tensors' `quantize_parameters` min/max set and scale/zero_point recomputed for the
        entry's dtype (asym: scale = (max - min) / (qmax - qmin), zero_point = round(qmin - min / scale));
        every other byte unchanged, the patched file read back and compared entry by entry before returning.
        Keys: tensor names (or `op:j` with a remedy detail naming the tensor); values: (min, max), a QParams or
        a remedy detail entry."""
        import re

        from qdebug.formats.calib_table import range_of, range_target

        edits: list[tuple[int, int, str]] = []
        notes: list[str] = []
        want: dict[str, tuple[float, float, float, int]] = {}
        starts = [0]
        for ln in self.text.splitlines(keepends=True):
            starts.append(starts[-1] + len(ln))
        order = sorted(self.params.values(), key=lambda e: e.line)
        for key, val in ranges.items():
            lo, hi = range_of(val, f"range for '{key}'")
            tensor = range_target(key, val)
            names = [tensor + s for s in (*TOOLKIT_SUFFIXES, "", *TWIN_SUFFIXES) if tensor + s in self.params]
            name = next((n for n in names if self.params[n].is_int), names[0] if names else None)
            if name is None:
                notes.append(f"'{tensor}': no {PARAMS_KEY} entry; range not written")
                continue
            tp = self.params[name]
            if not tp.is_int or len(tp.scale) != 1:
                notes.append(f"'{name}': {'a ' + tp.dtype if not tp.is_int else 'a per-channel'} entry carries no "
                             "per-tensor int range; left unchanged")
                continue
            nxt = next((e.line for e in order if e.line > tp.line), None)  # the entry ends where the next begins
            a, b = starts[tp.line - 1], starts[nxt - 1] if nxt is not None else len(self.text)
            body = self.text[a:b]
            qmin, qmax = DTYPES[tp.dtype]
            mn, mx = min(lo, 0.0), max(hi, 0.0)
            if re.search(r"^[ ]*qtype:[ ]*sym\b", body, re.M):
                scale, zp = (max(-mn, mx) / qmax if mx > mn else 1.0), 0
            else:
                scale = (mx - mn) / (qmax - qmin) if mx > mn else 1.0
                zp = int(min(max(round(qmin - mn / scale), qmin), qmax))
            found = []
            for fld, v in (("min", repr(mn)), ("max", repr(mx)), ("scale", repr(scale)), ("zero_point", str(zp))):
                m = re.search(rf"^([ ]*){fld}:[ ]*\r?\n\1-[ ]+([^\s#]+)[^\n]*\n(?!\1-)", body, re.M) or \
                    re.search(rf"^[ ]*{fld}:[ ]*\[[ ]*([^\],]+?)[ ]*\]", body, re.M)
                if m is not None:
                    g = m.lastindex or 1
                    found.append((a + m.start(g), a + m.end(g), v))
            if len(found) != 4:
                notes.append(f"'{name}': min/max/scale/zero_point not in the toolkit's one-value layout; left "
                             "unchanged")
                continue
            edits += found
            want[name] = (mn, mx, scale, zp)
        parts, k = [], 0
        for a, b, v in sorted(edits):
            parts += [self.text[k:a], v]
            k = b
        text = "".join(parts) + self.text[k:]
        new = read_cfg(text, self.path)
        for name, tp in self.params.items():
            got = new.params.get(name)
            exp = want.get(name)
            ok = got is not None and ((got.min, got.max, got.scale, got.zero_point) == ([exp[0]], [exp[1]], [exp[2]],
                                      [exp[3]]) if exp else got == tp)
            if not ok or new.custom != self.custom:
                raise AssertionError(f"internal error: entry '{name}' reads back wrong")  # pragma: no cover
        if want:
            notes.append(f"{len(want)} entr(ies) re-derived from the new ranges (min/max, scale, zero_point; "
                         "ori_min/ori_max keep the observed range)")
        return PromotionResult(text=text, changed=list(want), notes=notes)


@register_format
class Rknn2QuantCfg(RknnQuantCfg):
    """Alias prefix `rknn2:` for the same file (auto-detection uses `rknn`)."""

    format = "rknn2"


def _same_params_text(text: str, data: CfgData, old_text: str, old: CfgData) -> bool:
    return same_text(text, data.sections[PARAMS_KEY], old_text, old.sections[PARAMS_KEY])
