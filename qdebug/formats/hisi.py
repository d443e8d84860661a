"""HiSilicon SVP ATC `calibration_param.txt` (protobuf text format of `calibration.CalibrationParam`).

Reading is in `hisi_text.py` (one linear pass, every value validated). This module maps the records into
the simulator and promotes layers by editing only the promoted records' text: the rest of the file is
copied byte for byte, line endings included. Units: `scale` is the inverse step, q = round(x * scale) +
offset, x = (q - offset) / scale. See docs/formats.md for the grammar, the simulator mapping and the U8
image-record rule.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping

import numpy as np

from qdebug.errors import FormatError
from qdebug.formats.base import MappingReport, PromotionResult, VendorFile, register_format
from qdebug.formats.calib_table import range_of, range_target
from qdebug.formats.hisi_text import (  # noqa: F401  (re-exported: the record types and the tokenizer)
    DATA_TYPES,
    FLOAT32_MAX,
    FLOAT_TYPES,
    INT_RANGE,
    Factor,
    Field,
    Layer,
    Parser,
    Token,
    layer_of,
    read_layers,
    record_tree,
    tokenize,
)
from qdebug.graph.fusion import QuantOp, build_quant_ops, group_of
from qdebug.graph.model import ModelGraph
from qdebug.quant.profiles import get_profile
from qdebug.quant.scheme import Precision, QParams, QuantConfig

WIDEN = {"S4": "S16", "S8": "S16", "U4": "U16", "U8": "U16"}  # derived 16-bit type per narrow type
Edit = tuple[int, int, str]  # (start offset, end offset, replacement text)


def factor_qparams(f: Factor, axis: int | None = None) -> QParams | None:
    """The simulator's QParams for an integer record (None for F16/F32 records).

    Signed types: q = clip(round(x*scale) + offset, qmin, qmax), i.e. step = 1/scale, zero point = offset.
    Unsigned types (the U8 image record): the byte holds round(x*scale) in [0, 2^b-1]; the offset
    (-128 for images) is the shift into the signed domain of the next layer and does not change the
    represented values, so x in [0, 1] with scale 256 maps onto 256 levels [0, 255/256].
    """
    if not f.is_int:
        return None
    qmin, qmax = INT_RANGE[f.data_type]
    scale = np.asarray(f.scale, dtype=np.float64)
    if f.data_type.startswith("U"):
        zp = np.zeros(scale.shape, dtype=np.int64)
    else:
        off = f.offset or [0]
        zp = np.asarray(off if len(off) == len(scale) else [off[0]] * len(scale), dtype=np.int64)
    return QParams(1.0 / scale, zp, qmin, qmax, axis if scale.size > 1 else None)


def widen_record(data_type: str, scale: float, offset: int) -> tuple[str, float, int]:
    """16-bit record with the same represented range as a narrow one (exact: q16 = r*(q - qmin) + qmin16).

    S8 -> S16: scale x 257, offset x 257 + 128. U8 -> U16: scale x 257, offset x 256 (the -128 image
    shift becomes the -32768 half-range shift; 0 stays 0).
    """
    wide = WIDEN[data_type]
    lo, hi = INT_RANGE[data_type]
    lo16, hi16 = INT_RANGE[wide]
    r = (hi16 - lo16) // (hi - lo)
    if data_type.startswith("U"):
        return wide, scale * r, offset * (hi16 + 1) // (hi + 1)
    return wide, scale * r, r * (offset - lo) + lo16


def hisi_params(lo: float, hi: float, data_type: str, offset: int = 0) -> tuple[float, int]:
    """(scale, offset) of a `data_type` record covering [lo, hi] (0 always representable), as ATC writes them.

    Signed: scale = (qmax - qmin) / (hi - lo), offset = clip(round(qmin - lo * scale)). Unsigned (image
    records): the byte holds round(x * scale) in [0, qmax], so scale = qmax / hi and the record's offset (the
    shift into the signed domain) is kept."""
    qmin, qmax = INT_RANGE[data_type]
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if data_type.startswith("U"):
        return (qmax / hi if hi > 0 else 1.0), offset
    scale = (qmax - qmin) / (hi - lo) if hi > lo else 1.0
    return scale, int(np.clip(np.round(qmin - lo * scale), qmin, qmax))


def fmt_float(v: float) -> str:
    """Shortest float32 text, the way ATC's protobuf writer prints floats (e.g. 822.73407)."""
    s = np.format_float_positional(np.float32(v), unique=True, trim="-")
    if len(s) > 16:
        s = np.format_float_scientific(np.float32(v), unique=True, trim="-").replace("e+", "e")
    return s


@register_format
class HisiCalibration(VendorFile):
    """HiSilicon ATC `calibration_param.txt` / AMCT `quant_param_record.txt` (protobuf text format)."""

    format = "hisi"
    description = "HiSilicon SVP ATC calibration_param.txt (--gfpq_param_file)"
    default_suffix = ".txt"
    profile = "hisi"

    def __init__(self, path: str | None, text: str, layers: list[Layer]) -> None:
        super().__init__(path, text)
        self.layers = layers

    # ---------------------------------------------------------------- parse
    @classmethod
    def sniff(cls, text: str, path: str | None = None) -> bool:
        head = text[:20000]
        return bool(re.search(r"^\s*layer\s*:?\s*[{<]", head, re.M)) and "quant_param" in head

    @classmethod
    def parse(cls, text: str, path: str | None = None) -> HisiCalibration:
        layers = read_layers(text, path)
        if not layers:
            raise FormatError("no `layer { ... }` records", file=path, where="line 1",
                              fix="give the calibration_param.txt that ATC wrote into its output folder")
        return cls(path, text, layers)

    def dumps(self) -> str:
        return self.text

    def layer_names(self) -> list[str]:
        return [ly.name for ly in self.layers]

    def by_name(self, name: str) -> list[Layer]:
        return [ly for ly in self.layers if ly.name == name]

    # ------------------------------------------------------------ simulate
    def to_config(self, graph: ModelGraph, base: QuantConfig) -> tuple[QuantConfig, MappingReport]:
        cfg = self.start_config(base, "hisi")
        rep = MappingReport()
        ops = build_quant_ops(graph, fuse=get_profile(self.profile).fuse)
        groups = group_of(ops)
        inputs = {i.name for i in graph.inputs}
        fp16 = set(cfg.compute_fp16)
        covered: set[str] = set()
        passthrough = fused = mixed = outputs_int = 0
        for ly in self.layers:
            if ly.name in inputs:
                rep.matched.append(ly.name)
                covered.add(ly.name)
                qp = factor_qparams(ly.inputs[0]) if ly.inputs else None
                if qp is not None:
                    cfg.act_params[ly.name] = qp
                    if qp.bits > 8:
                        cfg.overrides[ly.name] = Precision.INT16
                continue
            if ly.name not in graph.node_by_name:
                rep.unmatched_records.append(ly.name)
                continue
            rep.matched.append(ly.name)
            op = groups.get(ly.name)
            if op is None or op.kind in ("const", "float"):
                continue  # shape arithmetic or an op the simulator leaves in float
            outputs_int += sum(f.is_int for f in ly.outputs)
            if op.kind == "passthrough":
                passthrough += 1
                covered.add(op.key)
                continue
            self._weights(graph, op, ly, cfg, rep)
            if op.key != ly.name:
                fused += 1  # a member fused into another op: its inputs are internal to the group
                continue
            covered.add(op.key)
            prec = _layer_precision(ly)
            if prec is not None:
                cfg.overrides[op.key] = max(prec, cfg.overrides.get(op.key, prec), key=lambda p: p.rank)
            if ly.calc_data_type == "F16":
                fp16.add(op.key)
            types = {f.data_type for f in ly.inputs}
            if types & set(FLOAT_TYPES) and types & set(INT_RANGE):
                mixed += 1
            if len(ly.inputs) != len(op.inputs):
                rep.notes.append(f"{ly.name}: {len(ly.inputs)} input record(s) for {len(op.inputs)} "
                                 f"non-constant input(s); pinned the first {min(len(ly.inputs), len(op.inputs))}")
            for j, f in enumerate(ly.inputs[:len(op.inputs)]):
                qp = factor_qparams(f)
                if qp is not None:
                    cfg.act_params[f"{op.key}:{j}"] = qp
        cfg.compute_fp16 = frozenset(fp16)
        for op in ops:
            if op.kind in ("compute", "input") and op.key not in covered:
                rep.nodes_without_record.append(op.key)
        if passthrough:
            rep.notes.append(f"{passthrough} record(s) of range-preserving ops (Reshape/Split/Slice...) carry "
                             "their input's quantization and are not simulated separately")
        if fused:
            rep.notes.append(f"{fused} record(s) name nodes that qdebug fuses into a preceding op; only their "
                             "weights were used")
        if mixed:
            rep.notes.append(f"{mixed} record(s) mix F16 and integer inputs; simulated at the higher precision")
        if outputs_int:
            rep.notes.append(f"{outputs_int} integer `output` record(s) ignored (the hisi profile quantizes "
                             "layer inputs)")
        return cfg, rep

    def _weights(self, graph: ModelGraph, op: QuantOp, ly: Layer, cfg: QuantConfig, rep: MappingReport) -> None:
        if not ly.weights:
            return
        node = ly.name if ly.name in op.weighted else (op.weighted[0] if op.weighted and op.key == ly.name else None)
        if node is None:
            return
        f = ly.weights[0]
        if not f.is_int:
            return
        w = graph.const_value(graph.node_by_name[node].input[1])
        channels = int(w.shape[0]) if w is not None and w.ndim else 1
        if len(f.scale) not in (1, channels):
            rep.notes.append(f"{ly.name}: {len(f.scale)} weight scales for {channels} output channels; "
                             "weights calibrated by qdebug")
            return
        qp = factor_qparams(f, axis=0)
        if qp is not None:
            cfg.weight_params[node] = qp

    # ------------------------------------------------------------- promote
    def promote(self, layers: list[str], dtype: Precision, graph: ModelGraph | None = None,
                donor: VendorFile | None = None) -> PromotionResult:
        if dtype == Precision.INT8:
            raise FormatError("int8 is not a promotion", file=self.path,
                              fix="use --dtype int16 (S16) or fp16 (F16)")
        names = self._resolve(layers, graph)
        edits: list[Edit] = []
        notes: list[str] = []
        if donor is not None:
            if not isinstance(donor, HisiCalibration):
                raise FormatError(f"the 16-bit file is a {donor.format} file, not a HiSilicon calibration file",
                                  file=donor.path, fix="give the calibration_param.txt of a --compile_mode 1 build")
            for name in names:
                theirs = donor.by_name(name)
                if not theirs:
                    close = difflib.get_close_matches(name, donor.layer_names(), n=3)
                    raise FormatError(f"the 16-bit file has no record for layer '{name}'", file=donor.path,
                                      fix=("did you mean " + ", ".join(close)) if close else
                                      "give the calibration file of the same model built with --compile_mode 1")
                src = donor.record_text(_editable(donor, theirs[0]))
                for ly in self.by_name(name):  # the record keeps this file's line endings
                    _editable(self, ly)
                    edits.append((ly.start, ly.end, _with_line_ending(src, _line_ending_at(self.text, ly.start))))
                if not _is_wide(theirs[0]):
                    notes.append(f"{name}: the donor record is not 16-bit (calc_data_type "
                                 f"{theirs[0].calc_data_type}); copied as is")
            notes.append(f"copied {len(names)} record(s) verbatim from {donor.path}")
        else:
            for name in names:
                for ly in self.by_name(name):
                    edits += self._derive_edits(ly, dtype)
            if dtype == Precision.INT16:
                notes.append("no 16-bit calibration file given: derived S16 parameters from each 8-bit record's "
                             "represented range (scale x257, offset x257+128: the same [lo, hi] on 65536 levels); "
                             "weights stay 8-bit (A16W8, as ATC --compile_mode 1 and --high_precision_layer do); "
                             "for measured 16-bit parameters build once with --compile_mode 1 and pass --from16")
            else:
                notes.append(f"set calc_data_type and input data_type to {_float_type(dtype)}; scale/offset kept")
        text, applied = self._apply(edits)
        differ = {ly.name for ly, new in self._reread(text, applied) if self.record_text(ly) != text[new.start:new.end]}
        changed = [n for n in names if n in differ]
        same = [n for n in names if n not in changed]
        if same:
            notes.append(f"already at the requested precision, left unchanged: {', '.join(same)}")
        return PromotionResult(text=text, changed=changed, notes=notes,
                               extra={"atc_option": "--high_precision_layer=" + ";".join(names)})

    # -------------------------------------------------------------- ranges
    def write_ranges(self, ranges: Mapping[str, object], graph: ModelGraph | None = None) -> PromotionResult:
        """A copy with the `input` records of these quantization points set to new ranges, scale/offset
        recomputed for each record's data type (`hisi_params`); every other byte is unchanged.

        Keys: `op:j` (input j of op's record, the hisi profile's points), a graph input, or a tensor (every
        record that reads it); values: (min, max), a QParams, or a remedy detail entry."""
        edits: list[Edit] = []
        notes: list[str] = []
        want: dict[tuple[str, int], tuple[float, float]] = {}
        for key, val in ranges.items():
            lo, hi = range_of(val, f"range for '{key}'")
            points = self._points(key, val, graph)
            if not points:
                notes.append(f"'{key}': no input record of this file reads it; range not written")
            for ly, j in points:
                f = ly.inputs[j]
                if not f.is_int:
                    notes.append(f"{ly.name} input {j}: a {f.data_type} record carries no range; left unchanged")
                    continue
                if len(f.scale) != 1:
                    notes.append(f"{ly.name} input {j}: per-channel record ({len(f.scale)} scales); left unchanged")
                    continue
                if f.data_type.startswith("U") and lo < 0:
                    notes.append(f"{ly.name} input {j}: {f.data_type} holds no negative values; the range's "
                                 f"minimum {lo:g} is clipped to 0")
                scale, offset = hisi_params(lo, hi, f.data_type, f.offset[0] if f.offset else 0)
                if not scale <= FLOAT32_MAX:
                    raise FormatError(f"layer '{ly.name}': the range ({lo:g}, {hi:g}) gives scale {scale:g}, "
                                      "beyond float32", file=self.path, where=f"line {f.line}",
                                      fix="widen the range (a zero-width range cannot be quantized)")
                msg = record_tree(self.text, _editable(self, ly), self.path).message
                assert msg is not None
                qp = msg.first("quant_param")
                assert qp is not None and qp.message is not None
                fm = qp.message.all("input")[j].message
                assert fm is not None
                scales, offsets = fm.all("scale"), fm.all("offset")
                edits.append(_replace(scales[0], fmt_float(scale)))
                if offsets:
                    edits.append(_replace(offsets[0], str(offset)))
                elif offset != 0:
                    edits.append(self._insert_after(scales[-1], f"offset: {offset}"))
                want[(ly.name, j)] = (float(np.float32(scale)), offset)
        text, applied = self._apply(edits)
        changed: list[str] = []
        for old, new in self._reread(text, applied):  # the patched records read back: only the asked values moved
            for j, (fo, fn) in enumerate(zip(old.inputs, new.inputs, strict=True)):
                exp = want.get((old.name, j))
                got = (float(np.float32(fn.scale[0])), fn.offset[0] if fn.offset else 0) if exp else None
                if (exp is None and fo != fn) or (exp is not None and got != exp):
                    raise AssertionError(f"internal error: record '{old.name}' input {j} reads back as {got}")
            if self.record_text(old) != text[new.start:new.end] and old.name not in changed:
                changed.append(old.name)
        if want:
            notes.append(f"{len(want)} input record(s) re-derived from the new ranges: scale = levels / (max - min), "
                         "offset = round(qmin - min * scale) for the record's data type")
        return PromotionResult(text=text, changed=changed, notes=notes)

    def _points(self, key: str, val: object, graph: ModelGraph | None) -> list[tuple[Layer, int]]:
        """(record, input index) pairs a range key addresses (see write_ranges)."""
        op, sep, j = key.rpartition(":")
        if sep and j.isdigit() and self.by_name(op):
            return [(ly, int(j)) for ly in self.by_name(op) if int(j) < len(ly.inputs)]
        tensor = range_target(key, val)
        if graph is not None and tensor in {i.name for i in graph.inputs}:
            return [(ly, 0) for ly in self.by_name(tensor) if ly.inputs]
        if graph is None:
            raise FormatError(f"range key '{key}' is a tensor name: the model is needed to find its records",
                              file=self.path, fix="pass the model, or key the range as NODE:INPUT_INDEX")
        out: list[tuple[Layer, int]] = []
        for q in build_quant_ops(graph, fuse=get_profile(self.profile).fuse):
            for k, (_, _, t) in enumerate(q.inputs):
                if t == tensor:
                    out += [(ly, k) for ly in self.by_name(q.key) if k < len(ly.inputs)]
        return out

    def record_text(self, ly: Layer) -> str:
        """The record's exact text (from `layer` to its closing brace)."""
        return self.text[ly.start:ly.end]

    def _resolve(self, layers: list[str], graph: ModelGraph | None) -> list[str]:
        have = set(self.layer_names())
        out: list[str] = []
        for name in layers:
            if name not in have and graph is not None and name in graph.producer:
                name = graph.producer[name].name
            if name not in have:
                close = difflib.get_close_matches(name, sorted(have), n=3, cutoff=0.5)
                raise FormatError(f"no record for layer '{name}'", file=self.path,
                                  fix=("did you mean " + ", ".join(close)) if close else
                                  "use a `name:` of a layer record (an ONNX node name)")
            if name not in out:
                out.append(name)
        return out

    def _derive_edits(self, ly: Layer, dtype: Precision) -> list[Edit]:
        rec = record_tree(self.text, _editable(self, ly), self.path)
        assert rec.message is not None
        qp = rec.message.first("quant_param")
        assert qp is not None and qp.message is not None
        edits: list[Edit] = []
        calc = ly.calc_data_type
        if dtype == Precision.INT16:
            new_calc = WIDEN.get(calc, calc)
        else:
            new_calc = "F32" if calc == "F32" else _float_type(dtype)
        if new_calc != calc:
            cf = rec.message.first("calc_data_type")
            if cf is not None:
                edits.append(_replace(cf, new_calc))
            else:
                edits.append(self._insert_after(rec.message.first("name"), f"calc_data_type: {new_calc}"))
        for f, ff in zip(ly.inputs, qp.message.all("input"), strict=True):
            msg = ff.message
            assert msg is not None
            dt = msg.first("data_type")
            assert dt is not None
            if dtype == Precision.INT16:
                if f.data_type not in WIDEN:
                    continue
                scales = msg.all("scale")
                offsets = msg.all("offset")
                wide = f.data_type
                for k, sf in enumerate(scales):
                    off = f.offset[k] if k < len(f.offset) else (f.offset[0] if f.offset else 0)
                    wide, s16, o16 = widen_record(f.data_type, f.scale[k], off)
                    if not s16 <= FLOAT32_MAX:
                        raise FormatError(f"layer '{ly.name}': scale {f.scale[k]} x 257 does not fit a float32",
                                          file=self.path, where=f"line {sf.line}",
                                          fix="pass the 16-bit file with --from16, or use --dtype fp16")
                    edits.append(_replace(sf, fmt_float(s16)))
                    if k < len(offsets):
                        edits.append(_replace(offsets[k], str(o16)))
                    elif not offsets and k == 0:
                        edits.append(self._insert_after(scales[-1], f"offset: {o16}"))
                edits.append(_replace(dt, wide))
            else:
                ft = _float_type(dtype)
                if f.data_type != ft and f.data_type != "F32":
                    edits.append(_replace(dt, ft))
        return edits

    def _insert_after(self, fld: Field | None, line_text: str) -> Edit:
        """An edit putting `line_text` on a new line after field `fld`, with that field's indentation and the
        line ending of its line (CRLF stays CRLF); after a trailing comment when the line has one."""
        assert fld is not None
        text = self.text
        line_start = text.rfind("\n", 0, fld.start) + 1
        indent = text[line_start:fld.start]
        if line_start == 0 or indent.strip(" \t\r\f\v"):
            indent = "  "
        eol = text.find("\n", fld.end)
        rest = text[fld.end:eol if eol >= 0 else len(text)]
        nl = "\r\n" if (rest.endswith("\r") if eol >= 0 else _crlf(text)) else "\n"
        tail = rest[:-1] if rest.endswith("\r") else rest
        if eol >= 0 and (not tail.strip(" \t") or tail.lstrip(" \t").startswith("#")):
            at = fld.end + len(tail)  # after the rest of the line (spaces, a comment), before its line ending
        else:
            at = fld.end
        return (at, at, f"{nl}{indent}{line_text}")

    def _apply(self, edits: list[Edit]) -> tuple[str, list[Edit]]:
        """The patched text, copying everything between the edits, and the edits applied (in order)."""
        parts: list[str] = []
        applied: list[Edit] = []
        k = 0
        for a, b, rep in sorted(edits, key=lambda e: (e[0], e[1])):
            if a < k:
                continue  # overlapping edit (a record listed twice): first wins
            parts.append(self.text[k:a])
            parts.append(rep)
            applied.append((a, b, rep))
            k = b
        parts.append(self.text[k:])
        return "".join(parts), applied

    def _reread(self, text: str, applied: list[Edit]) -> list[tuple[Layer, Layer]]:
        """Read every edited record again from the patched text: (old record, new record) pairs.

        The edits stay inside records (or replace whole records), whose text starts with the `layer` name and
        ends with a closing brace, so the text between them and the file's top-level structure are unchanged:
        reading the edited records again validates the patched file as a whole."""
        out: list[tuple[Layer, Layer]] = []
        shift = lines = j = 0
        for ly in self.layers:
            while j < len(applied) and applied[j][1] <= ly.start:
                a, b, rep = applied[j]
                shift += len(rep) - (b - a)
                lines += rep.count("\n") - self.text.count("\n", a, b)
                j += 1
            k = j
            while k < len(applied) and applied[k][0] >= ly.start and applied[k][1] <= ly.end:
                k += 1
            inner = applied[j:k]
            if not inner:
                continue
            start, line = ly.start + shift, ly.line + lines
            end = ly.end + shift + sum(len(rep) - (b - a) for a, b, rep in inner)
            fields = Parser(text, self.path, start, line).field(0)
            if len(fields) != 1 or fields[0].name != "layer" or fields[0].end != end:
                raise AssertionError(f"internal error: patched record '{ly.name}' does not parse as one record")
            out.append((ly, layer_of(text, fields[0], self.path)))
        return out


# ------------------------------------------------------------------ helpers
def _float_type(dtype: Precision) -> str:
    return "F32" if dtype == Precision.FP32 else "F16"


def _is_wide(ly: Layer) -> bool:
    return ly.calc_data_type in ("S16", "U16", "F16", "F32") or any(
        f.data_type in ("S16", "U16") for f in ly.inputs)


def _layer_precision(ly: Layer) -> Precision | None:
    """The op precision a record asks for (None = the default int8)."""
    types = [f.data_type for f in ly.inputs]
    if ly.calc_data_type in ("S16", "U16", "S32", "U32") or any(t in ("S16", "U16", "S32", "U32") for t in types):
        return Precision.INT16
    if types and all(t in FLOAT_TYPES for t in types):
        return Precision.FP32 if all(t == "F32" for t in types) else Precision.FP16
    if any(t in FLOAT_TYPES for t in types):
        return Precision.FP16
    return None


def _replace(f: Field, value: str) -> Edit:
    """An edit replacing the (first) value token of a scalar field."""
    _, a, b, _ = f.values[0]
    return (a, b, value)


def _editable(vf: HisiCalibration, ly: Layer) -> Layer:
    """`ly`, unless it is one item of a list `layer: [{...}, ...]` (its text is not one record)."""
    if vf.text[ly.end - 1] == "]":
        raise FormatError(f"layer '{ly.name}' is written inside a list `layer: [...]`", file=vf.path,
                          where=f"line {ly.line}", fix="write the record as `layer { ... }` to promote it")
    return ly


def _line_ending_at(text: str, pos: int) -> str:
    """The line ending of the line holding `pos` (the file's first one when that line has none)."""
    eol = text.find("\n", pos)
    if eol < 0:
        return "\r\n" if _crlf(text) else "\n"
    return "\r\n" if eol > 0 and text[eol - 1] == "\r" else "\n"


def _with_line_ending(text: str, nl: str) -> str:
    """`text` with every line ending written as `nl`."""
    lf = text.replace("\r\n", "\n")
    return lf if nl == "\n" else lf.replace("\n", nl)


def _crlf(text: str) -> bool:
    """True when the file's first line ends with CRLF (the style used where a line has no ending of its own)."""
    eol = text.find("\n")
    return eol > 0 and text[eol - 1] == "\r"
