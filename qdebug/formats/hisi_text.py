"""Reader for the protobuf text format of HiSilicon `calibration_param.txt`: one linear pass, record by record.

Top-level fields are read one at a time with character offsets, so a big file costs one pass and the
memory of the records' values, never a token list. A record in the exact layout ATC writes is read by a
few regular expressions (`fast_layer`); anything else, and any record with a value to refuse, goes through
the exact incremental tokenizer and recursive-descent parser, which produces every error message. Both
give the same `Layer`.
Every number is validated here (finite, positive normal float32 scales, offsets in their type's range,
bounded integers, known enums); malformed input raises `FormatError` naming file, line and fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from qdebug.errors import FormatError

# enum DataType of calibration.proto, in value order (S4=0 ... F32=9)
DATA_TYPES = ("S4", "U4", "S8", "U8", "S16", "U16", "F16", "S32", "U32", "F32")
INT_RANGE = {"S4": (-8, 7), "U4": (0, 15), "S8": (-128, 127), "U8": (0, 255), "S16": (-32768, 32767),
             "U16": (0, 65535), "S32": (-(2 ** 31), 2 ** 31 - 1), "U32": (0, 2 ** 32 - 1)}
FLOAT_TYPES = ("F16", "F32")
INT32 = (-(2 ** 31), 2 ** 31 - 1)
# offset (zero point) range per data type: signed types their own range; unsigned types also allow the
# negative shift into the signed domain of the same width (the U8 image record has offset -128)
OFFSET_RANGE = {dt: (lo if lo < 0 else -((hi + 1) // 2), hi) for dt, (lo, hi) in INT_RANGE.items()}
OFFSET_RANGE.update({"F16": INT32, "F32": INT32})
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32
MAX_NUMBER_CHARS = 64
MAX_DEPTH = 64
VERSION_MAX = 2 ** 32 - 1

_WS_CHARS = " \t\r\n\f\v"
_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n\f\v]+)
  | (?P<comment>\#[^\n]*)
  | (?P<punct>[{}<>:,;\[\]])
  | (?P<string>"(?:[^"\\\n]|\\[\s\S])*"|'(?:[^'\\\n]|\\[\s\S])*')
  | (?P<special>[-+](?i:inf(?:inity)?|nan)(?![A-Za-z0-9_]))
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
""", re.VERBOSE)
_SKIP = re.compile(r"(?:[ \t\r\n\f\v]+|#[^\n]*)+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")  # tab, newlines, \v, \f are whitespace
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")

Tok = tuple[str, int, int, int]  # (kind, start, end, line): kind is punct | string | number | ident


# ------------------------------------------------------------------ lossless tokens (tools and tests)
@dataclass
class Token:
    """One lossless token: kind is ws | comment | ident | number | string | punct."""

    kind: str
    text: str
    start: int
    line: int


def tokenize(text: str, path: str | None = None) -> list[Token]:
    """Split text into tokens whose concatenation is exactly `text` (the parser itself never builds this list)."""
    toks: list[Token] = []
    pos, line = 0, 1
    if text.startswith("\ufeff"):  # a byte order mark is part of the first whitespace token
        end = len(text) - len(text[1:].lstrip(_WS_CHARS))
        toks.append(Token("ws", text[:end], 0, 1))
        line += text.count("\n", 0, end)
        pos = end
    while pos < len(text):
        kind, end = _token_at(text, pos, line, path)
        toks.append(Token(kind, text[pos:end], pos, line))
        line += text.count("\n", pos, end)
        pos = end
    return toks


def _token_at(text: str, pos: int, line: int, path: str | None) -> tuple[str, int]:
    """(kind, end) of the token starting at `pos`; FormatError for a character that starts no token."""
    m = _TOKEN.match(text, pos)
    if m is None:
        c = text[pos]
        if c in "\"'":
            raise FormatError("unterminated string", file=path, where=f"line {line}", fix="close the quoted string")
        raise FormatError(f"unexpected character {c!r}", file=path, where=f"line {line}",
                          fix="the file is not protobuf text format; re-export it from ATC")
    kind, end = m.lastgroup or "", m.end()
    if kind == "special":
        return "number", end  # -inf, +nan: numbers that never pass validation
    if kind == "number" and end < len(text) and (text[end].isalnum() or text[end] in "_."):
        raise FormatError(f"malformed number {text[pos:end + 1]!r}", file=path, where=f"line {line}",
                          fix="write a plain decimal number")
    return kind, end


def unquote(tok: str) -> str:
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
            out += c.encode("utf-8", errors="replace")
            i += 1
            continue
        e = body[i + 1]
        if e in simple:
            out.append(simple[e])
            i += 2
        elif e in "xX":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:i + 4])
            out.append(int(m.group(), 16) if m else 0)
            i += 2 + (len(m.group()) if m else 0)
        elif e in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1:i + 4])
            assert m is not None
            out.append(int(m.group(), 8) & 0xFF)
            i += 1 + len(m.group())
        else:
            out += e.encode("utf-8", errors="replace")
            i += 2
    return out.decode("utf-8", errors="replace")


# ------------------------------------------------------------------ syntax tree of one record
@dataclass(slots=True)
class Message:
    """A `{ ... }` body: its fields in order, and the offsets of its braces."""

    fields: list[Field] = field(default_factory=list)
    open: int = -1
    close: int = -1
    open_line: int = 0

    def all(self, name: str) -> list[Field]:
        return [f for f in self.fields if f.name == name]

    def first(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


@dataclass(slots=True)
class Field:
    """One `name: value` or `name { ... }` occurrence, with character offsets for surgical edits.

    `end` is the end of the whole statement (for an item of a `[...]` list: the closing bracket), so a line
    inserted after it never lands inside a list. `values` holds the value token(s) of a scalar field
    (adjacent string literals concatenate)."""

    name: str
    line: int
    start: int
    end: int
    values: tuple[Tok, ...] = ()
    message: Message | None = None


class Parser:
    """Incremental recursive-descent parser over significant tokens, reading from any position of the text."""

    def __init__(self, text: str, path: str | None, pos: int = 0, line: int = 1) -> None:
        self.text = text
        self.path = path
        self.seek(pos, line)

    def seek(self, pos: int, line: int) -> None:
        """Continue reading at `pos` (on `line`), dropping any look-ahead."""
        if pos == 0 and self.text.startswith("\ufeff"):
            pos = 1  # a UTF-8 byte order mark reads as whitespace (and is written back unchanged)
        self.pos, self.line = pos, line
        self._peek: Tok | None = None

    def peek(self) -> Tok | None:
        if self._peek is None:
            text = self.text
            m = _SKIP.match(text, self.pos)
            if m is not None:
                self.line += text.count("\n", self.pos, m.end())
                self.pos = m.end()
            if self.pos >= len(text):
                return None
            kind, end = _token_at(text, self.pos, self.line, self.path)
            self._peek = (kind, self.pos, end, self.line)
            self.line += text.count("\n", self.pos, end)
            self.pos = end
        return self._peek

    def take(self) -> Tok:
        t = self.peek()
        assert t is not None
        self._peek = None
        return t

    def tok_text(self, t: Tok) -> str:
        return self.text[t[1]:t[2]]

    def err(self, problem: str, t: Tok | int | None = None, fix: str | None = None) -> FormatError:
        if t is None:
            t = self.peek()
        line = t if isinstance(t, int) else (t[3] if t is not None else _eof_line(self.text))
        return FormatError(problem, file=self.path, where=f"line {line}",
                           fix=fix or "check the brace nesting and `name: value` syntax around this line")

    def message(self, close: str | None, depth: int, open_tok: Tok | None = None) -> Message:
        """The fields up to `close` (None: up to the end of the text)."""
        if depth > MAX_DEPTH:
            raise self.err("messages nested too deeply")
        msg = Message(open=open_tok[1] if open_tok else -1, open_line=open_tok[3] if open_tok else 0)
        while True:
            t = self.peek()
            if t is None:
                if close is not None:
                    raise self.err(f"missing '{close}' at end of file", msg.open_line,
                                   fix=f"close the block opened on this line with '{close}'")
                return msg
            kind, start, _, _ = t
            c = self.text[start]
            if kind == "punct" and c in "}>":
                if close is None or c != close:
                    raise self.err(f"unexpected '{c}'", fix="remove it or fix the brace nesting")
                msg.close = self.take()[1]
                return msg
            if kind == "punct" and c in ",;":
                self.take()
                continue
            msg.fields.extend(self.field(depth))

    def field(self, depth: int) -> list[Field]:
        """One statement `name: value`, `name { ... }` or `name: [a, b]` (several fields)."""
        t = self.peek()
        if t is None or t[0] != "ident":
            raise self.err(f"expected a field name, got {self.tok_text(t)!r}" if t else "expected a field name")
        name_t = self.take()
        name, line, start = self.tok_text(name_t), name_t[3], name_t[1]
        t = self.peek()
        colon = False
        if t is not None and t[0] == "punct" and self.text[t[1]] == ":":
            self.take()
            colon = True
            t = self.peek()
        if t is None:
            raise self.err(f"field '{name}' has no value", name_t)
        c = self.text[t[1]]
        if t[0] == "punct" and c in "{<":
            sub = self.message("}" if c == "{" else ">", depth + 1, self.take())
            return [Field(name, line, start, sub.close + 1, message=sub)]
        if not colon:
            raise self.err(f"expected ':' after '{name}'", name_t)
        if t[0] == "punct" and c == "[":
            return self._list(name, name_t, depth)
        if t[0] not in ("number", "ident", "string"):
            raise self.err(f"expected a value after '{name}:', got {self.tok_text(t)!r}")
        vals = [self.take()]
        while vals[-1][0] == "string" and (n2 := self.peek()) is not None and n2[0] == "string":
            vals.append(self.take())  # adjacent string literals concatenate
        return [Field(name, line, start, vals[-1][2], values=tuple(vals))]

    def _list(self, name: str, name_t: Tok, depth: int) -> list[Field]:
        self.take()  # '['
        out: list[Field] = []
        while True:
            t = self.peek()
            if t is None:
                raise self.err(f"missing ']' in list '{name}'", name_t)
            kind, s, _, line = t
            c = self.text[s]
            if kind == "punct" and c == "]":
                end = self.take()[2]
                for f in out:
                    f.end = end
                return out
            if kind == "punct" and c == ",":
                self.take()
                continue
            if kind == "punct" and c in "{<":
                sub = self.message("}" if c == "{" else ">", depth + 1, self.take())
                out.append(Field(name, line, name_t[1], sub.close + 1, message=sub))
                continue
            if kind not in ("number", "ident", "string"):
                raise self.err(f"unexpected {self.tok_text(t)!r} in list '{name}'")
            out.append(Field(name, line, name_t[1], t[2], values=(self.take(),)))


def _eof_line(text: str) -> int:
    """Line of the last token of the text (its trailing whitespace run, if any)."""
    stripped = len(text.rstrip(_WS_CHARS))
    return 1 + text.count("\n", 0, stripped if stripped < len(text) else max(len(text) - 1, 0))


# ------------------------------------------------------------------ records
@dataclass(slots=True)
class Factor:
    """One `input` / `weight` / `output` FactorParam record."""

    kind: str
    data_type: str
    scale: list[float]
    offset: list[int]
    line: int

    @property
    def is_int(self) -> bool:
        return self.data_type in INT_RANGE


@dataclass(slots=True)
class Layer:
    """One `layer { ... }` record and where it is in the text (`text[start:end]` is the record)."""

    name: str
    calc_data_type: str
    inputs: list[Factor]
    weights: list[Factor]
    outputs: list[Factor]
    line: int
    start: int
    end: int


def _where(f: Field) -> str:
    return f"line {f.line}"


def _enum(text: str, f: Field, path: str | None) -> str:
    if not f.values:
        raise FormatError(f"{f.name} must be a DataType, not a block", file=path, where=_where(f),
                          fix="write e.g. `data_type: S8`")
    kind, s, e, line = f.values[0]
    v = text[s:e]
    if kind == "ident" and v in DATA_TYPES:
        return v
    if kind == "number" and len(v) <= 2 and v.isdigit() and int(v) < len(DATA_TYPES):
        return DATA_TYPES[int(v)]
    raise FormatError(f"unknown DataType {v[:40]!r} in {f.name}", file=path, where=f"line {line}",
                      fix=f"use one of {', '.join(DATA_TYPES)}")


def _number(text: str, f: Field, path: str | None, integer: bool = False) -> float | int:
    """The value of a numeric field: a finite number of bounded size (an int when `integer`)."""
    if not f.values:
        raise FormatError(f"{f.name} must be a number, not a block", file=path, where=_where(f),
                          fix=f"write `{f.name}: <number>`")
    kind, s, e, line = f.values[0]
    raw = text[s:e]
    hexa = raw.lstrip("+-")[:2].lower() == "0x"
    if kind == "number" and (integer or hexa) and len(raw) > MAX_NUMBER_CHARS:
        raise FormatError(f"{f.name}: integer of {len(raw)} characters", file=path, where=f"line {line}",
                          fix=f"write `{f.name}: <number>` with at most {MAX_NUMBER_CHARS} characters")
    v: float | int | None = None
    if kind == "number":
        if hexa:
            v = int(raw, 16)
        elif _PLAIN_NUMBER.fullmatch(raw.rstrip("fF")):
            v = float(raw.rstrip("fF"))
            if v != v or v in (float("inf"), float("-inf")):
                v = None
        if v is not None and not integer and isinstance(v, int):
            v = float(v) if abs(v) < 2 ** 1000 else None
    if v is None:
        raise FormatError(f"{f.name} must be a finite number, got {raw[:40]!r}", file=path, where=f"line {line}",
                          fix=f"write `{f.name}: <number>`")
    if integer:
        if v != int(v):
            raise FormatError(f"{f.name} must be an integer, got {raw!r}", file=path, where=f"line {line}",
                              fix=f"write `{f.name}: <integer>`")
        return int(v)
    return v


def check_scale(v: float, raw: str, where: str, path: str | None) -> None:
    """Raise FormatError unless `v` is a positive normal float32 (scale = 1/step)."""
    if v <= 0:
        raise FormatError(f"scale must be > 0, got {raw}", file=path, where=where,
                          fix="scale is 1/step; re-run ATC calibration for this layer")
    if not FLOAT32_TINY <= v <= FLOAT32_MAX:
        raise FormatError(f"scale {raw} is outside the normal float32 range (1.2e-38 to 3.4e38)", file=path,
                          where=where, fix="scale is 1/step; re-run ATC calibration for this layer")


def _factor(text: str, f: Field, path: str | None) -> Factor:
    if f.message is None:
        raise FormatError(f"`{f.name}` must be a block `{f.name} {{ ... }}`", file=path, where=_where(f),
                          fix="write data_type, scale and offset inside braces")
    m = f.message
    dts = m.all("data_type")
    if not dts:
        raise FormatError(f"`{f.name}` record without data_type", file=path, where=_where(f),
                          fix="add `data_type: S8` (or the type ATC wrote)")
    if len(dts) > 1:
        raise FormatError("data_type given twice", file=path, where=_where(dts[1]), fix="keep one data_type line")
    dt = _enum(text, dts[0], path)
    scales: list[float] = []
    for sf in m.all("scale"):
        v = float(_number(text, sf, path))
        check_scale(v, text[sf.values[0][1]:sf.values[0][2]], _where(sf), path)
        scales.append(v)
    offsets: list[int] = []
    lo, hi = OFFSET_RANGE[dt]
    for of in m.all("offset"):
        o = int(_number(text, of, path, integer=True))
        if not lo <= o <= hi:
            raise FormatError(f"offset {o} is outside the {dt} range {lo}..{hi}", file=path, where=_where(of),
                              fix="restore the offset ATC wrote (offset is the zero point)")
        offsets.append(o)
    if dt in INT_RANGE:
        if not scales:
            raise FormatError(f"{dt} `{f.name}` record without scale", file=path, where=_where(f),
                              fix="add `scale: <1/step>`")
        if len(offsets) not in (0, 1, len(scales)):
            raise FormatError(f"{len(offsets)} offsets for {len(scales)} scales", file=path, where=_where(f),
                              fix="give one offset, or one per scale")
    for pf in m.all("params"):
        if not pf.values or pf.values[0][0] != "string":
            raise FormatError("params must be a quoted bytes string", file=path, where=_where(pf),
                              fix='write `params: "..."`')
    return Factor(f.name, dt, scales, offsets, f.line)


def layer_of(text: str, f: Field, path: str | None) -> Layer:
    """Validate a `layer` field and read its record."""
    if f.message is None:
        raise FormatError("`layer` must be a block `layer { ... }`", file=path, where=_where(f),
                          fix="write layer records as `layer { name: ... }`")
    m = f.message
    nf = m.first("name")
    if nf is None or not nf.values or nf.values[0][0] != "string":
        raise FormatError("layer record without a quoted name", file=path, where=_where(f),
                          fix='add `name: "<ONNX node name>"`')
    name = "".join(unquote(text[s:e]) for _, s, e, _ in nf.values)
    cf = m.first("calc_data_type")
    calc = _enum(text, cf, path) if cf is not None else "S8"
    qp = m.first("quant_param")
    if qp is None:
        raise FormatError(f"layer '{name}' has no quant_param", file=path, where=_where(f),
                          fix="add a `quant_param { input { ... } }` block or delete the record")
    if qp.message is None:
        raise FormatError("quant_param must be a block", file=path, where=_where(qp),
                          fix="write `quant_param { ... }`")
    ins = [_factor(text, x, path) for x in qp.message.all("input")]
    ws = [_factor(text, x, path) for x in qp.message.all("weight")]
    outs = [_factor(text, x, path) for x in qp.message.all("output")]
    return Layer(name, calc, ins, ws, outs, f.line, f.start, f.end)


def _check_version(text: str, f: Field, path: str | None) -> None:
    fix = "write `version: 65536`"
    if not f.values or f.values[0][0] != "number":
        raise FormatError("version must be a number", file=path, where=_where(f), fix=fix)
    v = _number(text, f, path, integer=True)
    if not 0 <= v <= VERSION_MAX:
        raise FormatError(f"version {v} is outside 0..{VERSION_MAX}", file=path, where=_where(f), fix=fix)


# ------------------------------------------------------------------ the layout ATC writes
_DT = "S4|U4|S8|U8|S16|U16|F16|S32|U32|F32"
_FAST_HEAD = re.compile(r'layer \{\r?\n  name: "([^"\\\r\n]*)"\r?\n(?:  calc_data_type: (' + _DT + r")\r?\n)?"
                        r"  quant_param \{\r?\n")
_FAST_FACTOR = re.compile(r"    (input|weight|output) \{\r?\n      data_type: (" + _DT + r")\r?\n"
                          r"((?:      scale: [0-9][0-9.eE+-]*\r?\n)*)((?:      offset: -?\d{1,10}\r?\n)*)    \}\r?\n")
_FAST_TAIL = re.compile(r"  \}\r?\n(?:  weight_mode: [A-Za-z_][A-Za-z0-9_]*\r?\n)?\}")


def fast_layer(text: str, pos: int, line: int) -> Layer | None:
    """The record at `pos` when it is in ATC's exact layout with valid values, else None (read it exactly)."""
    m = _FAST_HEAD.match(text, pos)
    if m is None:
        return None
    name, calc = m.groups()
    groups: dict[str, list[Factor]] = {"input": [], "weight": [], "output": []}
    at = m.end()
    while (fm := _FAST_FACTOR.match(text, at)) is not None:
        kind, dt, sc, of = fm.groups()
        try:
            scales = list(map(float, sc.split()[1::2])) if sc else []
        except ValueError:
            return None  # not one number token (e.g. 1.2.3): the exact reader says so
        if scales and not (FLOAT32_TINY <= min(scales) and max(scales) <= FLOAT32_MAX):
            return None
        offsets = list(map(int, of.split()[1::2])) if of else []
        if offsets:
            lo, hi = OFFSET_RANGE[dt]
            if not (lo <= min(offsets) and max(offsets) <= hi):
                return None
        if dt in INT_RANGE and (not scales or len(offsets) not in (0, 1, len(scales))):
            return None
        groups[kind].append(Factor(kind, dt, scales, offsets, line + text.count("\n", pos, at)))
        at = fm.end()
    t = _FAST_TAIL.match(text, at)
    if t is None:
        return None
    return Layer(name, calc or "S8", groups["input"], groups["weight"], groups["output"], line, pos, t.end())


# ------------------------------------------------------------------ the whole file
def read_layers(text: str, path: str | None, exact: bool = False) -> list[Layer]:
    """Validate the whole file in one pass and return its layer records in file order."""
    return list(iter_layers(text, path, exact))


def iter_layers(text: str, path: str | None, exact: bool = False) -> Iterator[Layer]:
    """Top-level fields one at a time: ATC-layout records by `fast_layer` (unless `exact`), the rest by the
    exact parser."""
    bad = _CONTROL.search(text)
    if bad is not None:  # the tokenizer lets them through inside quoted names; ATC never writes them
        raise FormatError(f"control character {bad.group()!r}", file=path,
                          where=f"line {1 + text.count(chr(10), 0, bad.start())}", fix="remove the control character")
    p = Parser(text, path)
    seen_version = False
    while True:
        t = p.peek()
        if t is None:
            return
        kind, start, _, line = t
        if kind == "punct" and text[start] in ",;":
            p.take()
            continue
        if not exact and kind == "ident" and text.startswith("layer {", start):
            ly = fast_layer(text, start, line)
            if ly is not None:
                yield ly
                p.seek(ly.end, line + text.count("\n", start, ly.end))
                continue
        if kind == "punct" and text[start] in "}>":
            raise p.err(f"unexpected '{text[start]}'", fix="remove it or fix the brace nesting")
        for f in p.field(0):
            if f.name == "layer":
                yield layer_of(text, f, path)
            elif f.name == "version":
                if seen_version:  # two versions: which one ATC would read is undefined
                    raise FormatError("`version` given twice", file=path, where=_where(f),
                                      fix="keep one `version: 65536` line")
                seen_version = True
                _check_version(text, f, path)


def record_tree(text: str, ly: Layer, path: str | None) -> Field:
    """The syntax tree of one record (offsets into `text`), read again by the exact parser for editing."""
    p = Parser(text, path, ly.start, ly.line)
    fields = p.field(0)
    assert len(fields) == 1 and fields[0].start == ly.start and fields[0].end == ly.end
    return fields[0]
