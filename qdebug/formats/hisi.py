"""HiSilicon SVP ATC `calibration_param.txt` (protobuf text format of `calibration.CalibrationParam`).

A small lossless tokenizer/parser (no protobuf dependency): every character of the file belongs to one
token, so an unchanged file is written back byte for byte, and promotion edits only the tokens of the
promoted records. Units: `scale` is the inverse step, q = round(x * scale) + offset, x = (q - offset) / scale.
See docs/formats.md for the grammar, the mapping into the simulator and the U8 image-record rule.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field

import numpy as np

from qdebug.errors import FormatError
from qdebug.formats.base import MappingReport, PromotionResult, VendorFile, register_format
from qdebug.graph.fusion import QuantOp, build_quant_ops, group_of
from qdebug.graph.model import ModelGraph
from qdebug.quant.profiles import get_profile
from qdebug.quant.scheme import Precision, QParams, QuantConfig

# enum DataType of calibration.proto, in value order (S4=0 ... F32=9)
DATA_TYPES = ("S4", "U4", "S8", "U8", "S16", "U16", "F16", "S32", "U32", "F32")
INT_RANGE = {"S4": (-8, 7), "U4": (0, 15), "S8": (-128, 127), "U8": (0, 255), "S16": (-32768, 32767),
             "U16": (0, 65535), "S32": (-(2 ** 31), 2 ** 31 - 1), "U32": (0, 2 ** 32 - 1)}
FLOAT_TYPES = ("F16", "F32")
WIDEN = {"S4": "S16", "S8": "S16", "U4": "U16", "U8": "U16"}  # derived 16-bit type per narrow type
MAX_DEPTH = 64

_PUNCT = set("{}<>:,;[]")
_NUMBER = re.compile(r"[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?)")
_SPECIAL = re.compile(r"[-+](?:inf(?:inity)?|nan)(?![A-Za-z0-9_])", re.IGNORECASE)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_WS = re.compile(r"[ \t\r\n\f\v]+")


# ------------------------------------------------------------------ tokens
@dataclass
class Token:
    """One lossless token: kind is ws | comment | ident | number | string | punct."""

    kind: str
    text: str
    start: int
    line: int


def tokenize(text: str, path: str | None = None) -> list[Token]:
    """Split text into tokens whose concatenation is exactly `text`."""
    toks: list[Token] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n\f\v":
            m = _WS.match(text, i)
            assert m is not None
            kind, j = "ws", m.end()
        elif c == "#":
            j = text.find("\n", i)
            kind, j = "comment", (n if j < 0 else j)
        elif c in _PUNCT:
            kind, j = "punct", i + 1
        elif c in "\"'":
            kind, j = "string", _string_end(text, i, line, path)
        elif c in "+-" and (m := _SPECIAL.match(text, i)) is not None:
            kind, j = "number", m.end()  # -inf, -nan
        elif c in "0123456789+-." and (m := _NUMBER.match(text, i)) is not None:
            kind, j = "number", m.end()
            if j < n and (text[j].isalnum() or text[j] in "_."):
                raise FormatError(f"malformed number {text[i:j + 1]!r}", file=path, where=f"line {line}",
                                  fix="write a plain decimal number")
        elif (m := _IDENT.match(text, i)) is not None:
            kind, j = "ident", m.end()
        else:
            raise FormatError(f"unexpected character {c!r}", file=path, where=f"line {line}",
                              fix="the file is not protobuf text format; re-export it from ATC")
        toks.append(Token(kind, text[i:j], i, line))
        line += text.count("\n", i, j)
        i = j
    return toks


def _string_end(text: str, i: int, line: int, path: str | None) -> int:
    q = text[i]
    j = i + 1
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == "\n":
            break
        if c == q:
            return j + 1
        j += 1
    raise FormatError("unterminated string", file=path, where=f"line {line}", fix="close the quoted string")


def _unquote(tok: str) -> str:
    """Decode a C-style quoted protobuf string literal."""
    body = tok[1:-1]
    if "\\" not in body:
        return body
    out = bytearray()
    i = 0
    simple = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11, "\\": 92, "'": 39, '"': 34, "?": 63}
    while i < len(body):
        c = body[i]
        if c != "\\" or i + 1 >= len(body):
            out += c.encode("utf-8")
            i += 1
            continue
        e = body[i + 1]
        if e in simple:
            out.append(simple[e])
            i += 2
        elif e in "xX":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:])
            out.append(int(m.group(), 16) if m else 0)
            i += 2 + (len(m.group()) if m else 0)
        elif e in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1:])
            assert m is not None
            out.append(int(m.group(), 8) & 0xFF)
            i += 1 + len(m.group())
        else:
            out += e.encode("utf-8")
            i += 2
    return out.decode("utf-8", errors="replace")


# ------------------------------------------------------------------ syntax tree
@dataclass
class Field:
    """One `name: value` or `name { ... }` occurrence, with token indices for surgical edits."""

    name: str
    line: int
    name_tok: int
    value_tok: int | None = None  # scalar value token index
    message: Message | None = None
    last_tok: int | None = None  # last token of a scalar value (adjacent string literals concatenate)

    @property
    def is_message(self) -> bool:
        return self.message is not None


@dataclass
class Message:
    """A `{ ... }` body (or the whole file): its fields in order and the token range it spans."""

    fields: list[Field] = field(default_factory=list)
    open_tok: int = -1
    close_tok: int = -1

    def all(self, name: str) -> list[Field]:
        return [f for f in self.fields if f.name == name]

    def first(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


class _Parser:
    """Recursive-descent parser over the significant tokens."""

    def __init__(self, toks: list[Token], path: str | None) -> None:
        self.toks = toks
        self.path = path
        self.sig = [k for k, t in enumerate(toks) if t.kind not in ("ws", "comment")]
        self.p = 0

    def err(self, problem: str, k: int | None = None, fix: str | None = None) -> FormatError:
        if k is None:
            k = self.sig[self.p] if self.p < len(self.sig) else None
        line = self.toks[k].line if k is not None else (self.toks[-1].line if self.toks else 1)
        return FormatError(problem, file=self.path, where=f"line {line}",
                           fix=fix or "check the brace nesting and `name: value` syntax around this line")

    def peek(self) -> Token | None:
        return self.toks[self.sig[self.p]] if self.p < len(self.sig) else None

    def take(self) -> int:
        k = self.sig[self.p]
        self.p += 1
        return k

    def message(self, close: str | None, depth: int, open_tok: int = -1) -> Message:
        if depth > MAX_DEPTH:
            raise self.err("messages nested too deeply")
        msg = Message(open_tok=open_tok)
        while True:
            t = self.peek()
            if t is None:
                if close is not None:
                    raise self.err(f"missing '{close}' at end of file", k=msg.open_tok,
                                   fix=f"close the block opened on this line with '{close}'")
                return msg
            if t.kind == "punct" and t.text in "}>":
                if close is None or t.text != close:
                    raise self.err(f"unexpected '{t.text}'", fix="remove it or fix the brace nesting")
                msg.close_tok = self.take()
                return msg
            if t.kind == "punct" and t.text in ",;":
                self.take()
                continue
            if t.kind != "ident":
                raise self.err(f"expected a field name, got {t.text!r}")
            name_k = self.take()
            self.field(msg, name_k, depth)

    def field(self, msg: Message, name_k: int, depth: int) -> None:
        name = self.toks[name_k].text
        line = self.toks[name_k].line
        t = self.peek()
        colon = False
        if t is not None and t.kind == "punct" and t.text == ":":
            self.take()
            colon = True
            t = self.peek()
        if t is None:
            raise self.err(f"field '{name}' has no value", k=name_k)
        if t.kind == "punct" and t.text in "{<":
            open_k = self.take()
            sub = self.message("}" if t.text == "{" else ">", depth + 1, open_k)
            msg.fields.append(Field(name, line, name_k, message=sub))
            return
        if not colon:
            raise self.err(f"expected ':' after '{name}'", k=name_k)
        if t.kind == "punct" and t.text == "[":
            self.take()
            while True:
                t = self.peek()
                if t is None:
                    raise self.err(f"missing ']' in list '{name}'", k=name_k)
                if t.kind == "punct" and t.text == "]":
                    self.take()
                    return
                if t.kind == "punct" and t.text == ",":
                    self.take()
                    continue
                if t.kind == "punct" and t.text in "{<":
                    open_k = self.take()
                    sub = self.message("}" if t.text == "{" else ">", depth + 1, open_k)
                    msg.fields.append(Field(name, t.line, name_k, message=sub))
                    continue
                if t.kind not in ("number", "ident", "string"):
                    raise self.err(f"unexpected {t.text!r} in list '{name}'")
                msg.fields.append(Field(name, t.line, name_k, value_tok=self.take()))
        if t.kind not in ("number", "ident", "string"):
            raise self.err(f"expected a value after '{name}:', got {t.text!r}")
        vk = last = self.take()
        while t.kind == "string" and (n2 := self.peek()) is not None and n2.kind == "string":
            last = self.take()  # adjacent string literals concatenate
        msg.fields.append(Field(name, line, name_k, value_tok=vk, last_tok=last))


# ------------------------------------------------------------------ records
@dataclass
class Factor:
    """One `input` / `weight` / `output` FactorParam record."""

    kind: str
    data_type: str
    scale: list[float]
    offset: list[int]
    line: int
    field: Field

    @property
    def is_int(self) -> bool:
        return self.data_type in INT_RANGE


@dataclass
class Layer:
    """One `layer { ... }` record."""

    name: str
    calc_data_type: str
    inputs: list[Factor]
    weights: list[Factor]
    outputs: list[Factor]
    line: int
    field: Field
    calc_field: Field | None


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

    def __init__(self, path: str | None, text: str, tokens: list[Token], root: Message,
                 layers: list[Layer]) -> None:
        super().__init__(path, text)
        self.tokens = tokens
        self.root = root
        self.layers = layers

    # ---------------------------------------------------------------- parse
    @classmethod
    def sniff(cls, text: str, path: str | None = None) -> bool:
        head = text[:20000]
        return bool(re.search(r"^\s*layer\s*:?\s*[{<]", head, re.M)) and "quant_param" in head

    @classmethod
    def parse(cls, text: str, path: str | None = None) -> HisiCalibration:
        toks = tokenize(text, path)
        parser = _Parser(toks, path)
        root = parser.message(None, 0)
        layers: list[Layer] = []
        for f in root.fields:
            if f.name == "layer":
                layers.append(_layer(toks, f, path))
            elif f.name == "version" and (f.value_tok is None or toks[f.value_tok].kind != "number"):
                raise FormatError("version must be a number", file=path, where=_where(f),
                                  fix="write `version: 65536`")
        if not layers:
            raise FormatError("no `layer { ... }` records", file=path, where="line 1",
                              fix="give the calibration_param.txt that ATC wrote into its output folder")
        return cls(path, text, toks, root, layers)

    def dumps(self) -> str:
        return "".join(t.text for t in self.tokens)

    def layer_names(self) -> list[str]:
        return [ly.name for ly in self.layers]

    def by_name(self, name: str) -> list[Layer]:
        return [ly for ly in self.layers if ly.name == name]

    # ------------------------------------------------------------ simulate
    def to_config(self, graph: ModelGraph, base: QuantConfig) -> tuple[QuantConfig, MappingReport]:
        cfg = QuantConfig(scheme=base.scheme, overrides=dict(base.overrides), act_params=dict(base.act_params),
                          weight_params=dict(base.weight_params), compute_fp16=base.compute_fp16,
                          source=f"hisi:{self.path}" if self.path else "hisi")
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
        edits: list[tuple[int, int, str]] = []  # (first token, last token + 1, replacement)
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
                src = donor.record_text(theirs[0])
                for ly in self.by_name(name):
                    a, b = _span(ly.field)
                    edits.append((a, b, src))
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
        text = self._apply(edits)
        new = HisiCalibration.parse(text, self.path)
        differ = {a.name for a, b in zip(self.layers, new.layers, strict=True)
                  if self.record_text(a) != new.record_text(b)}
        changed = [n for n in names if n in differ]
        same = [n for n in names if n not in changed]
        if same:
            notes.append(f"already at the requested precision, left unchanged: {', '.join(same)}")
        return PromotionResult(text=new.text, changed=changed, notes=notes,
                               extra={"atc_option": "--high_precision_layer=" + ";".join(names)})

    def record_text(self, ly: Layer) -> str:
        a, b = _span(ly.field)
        return "".join(t.text for t in self.tokens[a:b])

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

    def _derive_edits(self, ly: Layer, dtype: Precision) -> list[tuple[int, int, str]]:
        edits: list[tuple[int, int, str]] = []
        calc = ly.calc_data_type
        if dtype == Precision.INT16:
            new_calc = WIDEN.get(calc, calc)
        else:
            new_calc = "F32" if calc == "F32" else _float_type(dtype)
        if new_calc != calc:
            if ly.calc_field is not None and ly.calc_field.value_tok is not None:
                k = ly.calc_field.value_tok
                edits.append((k, k + 1, new_calc))
            else:
                edits.append(self._insert_after(ly.field.message.first("name"), f"calc_data_type: {new_calc}"))
        for f in ly.inputs:
            msg = f.field.message
            assert msg is not None
            dt = msg.first("data_type")
            assert dt is not None and dt.value_tok is not None
            if dtype == Precision.INT16:
                if f.data_type not in WIDEN:
                    continue
                scales = msg.all("scale")
                offsets = msg.all("offset")
                wide = f.data_type
                for k, sf in enumerate(scales):
                    off = f.offset[k] if k < len(f.offset) else (f.offset[0] if f.offset else 0)
                    wide, s16, o16 = widen_record(f.data_type, f.scale[k], off)
                    assert sf.value_tok is not None
                    edits.append((sf.value_tok, sf.value_tok + 1, fmt_float(s16)))
                    if k < len(offsets):
                        ok = offsets[k].value_tok
                        assert ok is not None
                        edits.append((ok, ok + 1, str(o16)))
                    elif not offsets and k == 0:
                        edits.append(self._insert_after(scales[-1], f"offset: {o16}"))
                edits.append((dt.value_tok, dt.value_tok + 1, wide))
            else:
                ft = _float_type(dtype)
                if f.data_type != ft and f.data_type != "F32":
                    edits.append((dt.value_tok, dt.value_tok + 1, ft))
        return edits

    def _insert_after(self, fld: Field | None, line_text: str) -> tuple[int, int, str]:
        """An edit inserting `line_text` on a new line after field `fld`, with that field's indentation."""
        assert fld is not None
        last = fld.last_tok if fld.last_tok is not None else fld.message.close_tok  # type: ignore[union-attr]
        indent = _indent_of(self.tokens, fld.name_tok)
        k = last + 1
        return (k, k, f"\n{indent}{line_text}")

    def _apply(self, edits: list[tuple[int, int, str]]) -> str:
        parts: list[str] = []
        k = 0
        for a, b, rep in sorted(edits, key=lambda e: (e[0], e[1])):
            if a < k:
                continue  # overlapping edit (a record listed twice): first wins
            parts.extend(t.text for t in self.tokens[k:a])
            parts.append(rep)
            k = b
        parts.extend(t.text for t in self.tokens[k:])
        return "".join(parts)


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


def _indent_of(tokens: list[Token], k: int) -> str:
    if k > 0 and tokens[k - 1].kind == "ws":
        ws = tokens[k - 1].text
        if "\n" in ws:
            return ws.rsplit("\n", 1)[1]
    return "  "


def _span(f: Field) -> tuple[int, int]:
    """Token range of a whole field, from its name to its closing brace (or value)."""
    end = f.message.close_tok if f.message is not None else f.last_tok
    assert end is not None
    return f.name_tok, end + 1


def _where(f: Field) -> str:
    return f"line {f.line}"


def _enum(toks: list[Token], f: Field, path: str | None) -> str:
    if f.value_tok is None:
        raise FormatError(f"{f.name} must be a DataType, not a block", file=path, where=_where(f),
                          fix="write e.g. `data_type: S8`")
    t = toks[f.value_tok]
    if t.kind == "ident" and t.text in DATA_TYPES:
        return t.text
    if t.kind == "number" and re.fullmatch(r"\d+", t.text) and int(t.text) < len(DATA_TYPES):
        return DATA_TYPES[int(t.text)]
    raise FormatError(f"unknown DataType {t.text!r} in {f.name}", file=path, where=f"line {t.line}",
                      fix=f"use one of {', '.join(DATA_TYPES)}")


def _number(toks: list[Token], f: Field, path: str | None, integer: bool = False) -> float:
    if f.value_tok is None:
        raise FormatError(f"{f.name} must be a number, not a block", file=path, where=_where(f),
                          fix=f"write `{f.name}: <number>`")
    t = toks[f.value_tok]
    text = t.text.rstrip("fF") if not t.text.lower().startswith("0x") else t.text
    try:
        v = float(int(text, 16)) if text.lower().lstrip("+-").startswith("0x") else float(text)
    except ValueError:
        v = math.nan
    if t.kind != "number" or not math.isfinite(v):
        raise FormatError(f"{f.name} must be a finite number, got {t.text!r}", file=path, where=f"line {t.line}",
                          fix=f"write `{f.name}: <number>`")
    if integer and v != int(v):
        raise FormatError(f"{f.name} must be an integer, got {t.text!r}", file=path, where=f"line {t.line}",
                          fix=f"write `{f.name}: <integer>`")
    return v


def _factor(toks: list[Token], f: Field, path: str | None) -> Factor:
    if f.message is None:
        raise FormatError(f"`{f.name}` must be a block `{f.name} {{ ... }}`", file=path, where=_where(f),
                          fix="write data_type, scale and offset inside braces")
    m = f.message
    dt_f = m.first("data_type")
    if dt_f is None:
        raise FormatError(f"`{f.name}` record without data_type", file=path, where=_where(f),
                          fix="add `data_type: S8` (or the type ATC wrote)")
    if len(m.all("data_type")) > 1:
        raise FormatError("data_type given twice", file=path, where=_where(m.all("data_type")[1]),
                          fix="keep one data_type line")
    dt = _enum(toks, dt_f, path)
    scales = []
    for sf in m.all("scale"):
        v = _number(toks, sf, path)
        if v <= 0:
            raise FormatError(f"scale must be > 0, got {toks[sf.value_tok].text}", file=path,  # type: ignore[index]
                              where=_where(sf), fix="scale is 1/step; re-run ATC calibration for this layer")
        scales.append(v)
    offsets = [int(_number(toks, of, path, integer=True)) for of in m.all("offset")]
    if dt in INT_RANGE:
        if not scales:
            raise FormatError(f"{dt} `{f.name}` record without scale", file=path, where=_where(f),
                              fix="add `scale: <1/step>`")
        if len(offsets) not in (0, 1, len(scales)):
            raise FormatError(f"{len(offsets)} offsets for {len(scales)} scales", file=path, where=_where(f),
                              fix="give one offset, or one per scale")
    for pf in m.all("params"):
        if pf.value_tok is None or toks[pf.value_tok].kind != "string":
            raise FormatError("params must be a quoted bytes string", file=path, where=_where(pf),
                              fix='write `params: "..."`')
    return Factor(f.name, dt, scales, offsets, f.line, f)


def _layer(toks: list[Token], f: Field, path: str | None) -> Layer:
    if f.message is None:
        raise FormatError("`layer` must be a block `layer { ... }`", file=path, where=_where(f),
                          fix="write layer records as `layer { name: ... }`")
    m = f.message
    nf = m.first("name")
    if nf is None or nf.value_tok is None or toks[nf.value_tok].kind != "string":
        raise FormatError("layer record without a quoted name", file=path, where=_where(f),
                          fix='add `name: "<ONNX node name>"`')
    name = "".join(_unquote(t.text) for t in toks[nf.value_tok:(nf.last_tok or nf.value_tok) + 1]
                   if t.kind == "string")
    cf = m.first("calc_data_type")
    calc = _enum(toks, cf, path) if cf is not None else "S8"
    qp = m.first("quant_param")
    if qp is None:
        raise FormatError(f"layer '{name}' has no quant_param", file=path, where=_where(f),
                          fix="add a `quant_param { input { ... } }` block or delete the record")
    if qp.message is None:
        raise FormatError("quant_param must be a block", file=path, where=_where(qp),
                          fix="write `quant_param { ... }`")
    ins = [_factor(toks, x, path) for x in qp.message.all("input")]
    ws = [_factor(toks, x, path) for x in qp.message.all("weight")]
    outs = [_factor(toks, x, path) for x in qp.message.all("output")]
    return Layer(name, calc, ins, ws, outs, f.line, f, cf)
