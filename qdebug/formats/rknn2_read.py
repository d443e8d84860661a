"""Reader of rknn-toolkit2 `.quantization.cfg` files: values and line marks in one linear pass, every number checked.

The file is cut into top-level sections (`rknn_yaml.split_sections`); `quantize_parameters` is cut into its
tensor entries, and an entry in the exact layout `hybrid_quantization_step1` writes is read by two regular
expressions (`_FAST_ENTRY`, `_FAST_FIELD`). Any other entry, and every other section, is composed by PyYAML
on its own; a file that cannot be cut is composed whole. All paths end in `_make`, which validates: known
dtype/qmethod, scales positive normal float32, integer zero points inside their dtype's range, one zero point
per scale, finite min/max. Errors are FormatError naming file, line and fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import yaml

from qdebug.errors import FormatError
from qdebug.formats.rknn_yaml import (
    NeedsWholeText,
    Section,
    check_printable,
    child_indent,
    compose,
    entry_end,
    indent_at,
    line_of,
    mapping_items,
    refuse_if_too_big,
    skip_blank_lines,
    split_sections,
)
from qdebug.quant.scheme import Precision, QParams

DTYPES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
FLOAT_DTYPES = {"float16": Precision.FP16, "float32": Precision.FP32}
# non-float tensors (shape constants, indices) the toolkit also lists; kept verbatim, not simulated
OTHER_DTYPES = {"int32", "int64", "uint16", "uint32", "bool", "float64"}
KNOWN_DTYPES = set(DTYPES) | set(FLOAT_DTYPES) | OTHER_DTYPES
QMETHODS = ("layer", "channel")
INT32 = (-(2 ** 31), 2 ** 31 - 1)
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32
CUSTOM_KEY = "custom_quantize_layers"
PARAMS_KEY = "quantize_parameters"
CUSTOM_DTYPES = ("int8", "int16", "float16", "float32")
FIX_FILE = "give the .quantization.cfg written by hybrid_quantization_step1"


@dataclass(slots=True)
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


@dataclass
class CfgData:
    """What a cfg file holds: its top-level sections (with the nodes of the small ones), the tensor entries,
    the custom_quantize_layers entries and the indentation of the tensor entries."""

    sections: dict[str, Section]
    params: dict[str, TensorParams]
    custom: dict[str, str]
    indent: int


Where = Callable[[str, int | None], str]


def _nums(v: object, what: str, name: str, where: str, path: str | None) -> list[float]:
    if v is None:
        return []
    vals = v if isinstance(v, list) else [v]
    out = []
    for x in vals:
        f = math.nan
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            try:
                f = float(x)
            except OverflowError:  # an integer of hundreds of digits
                pass
        if not math.isfinite(f):
            raise FormatError(f"{name}: {what} must be numbers, got {repr(x)[:40]}", file=path, where=where,
                              fix="restore the values the toolkit wrote")
        out.append(f)
    return out


def _make(name: str, line: int, path: str | None, at: Where, dtype_v: object, qmethod_v: object, scale_v: object,
          zp_v: object, min_v: object, max_v: object, nums: Callable[..., list[float]] | None = None) -> TensorParams:
    """Validate one entry's values (as YAML typed them) into TensorParams; `at(field, item)` gives error lines.
    `nums` reads a numeric field (default: `_nums`, checking every value; the fast reader passes checked lists)."""
    _nums_of = nums or _nums
    entry = f"line {line}"
    dtype = str(dtype_v or "int8")
    if dtype not in KNOWN_DTYPES:
        raise FormatError(f"{name}: unknown dtype {dtype[:40]!r}", file=path, where=at("dtype", None),
                          fix="the toolkit writes int8, int16, float16 or float32; do not edit dtype")
    qmethod = str(qmethod_v or "layer")
    if qmethod not in QMETHODS:
        raise FormatError(f"{name}: unknown qmethod {qmethod[:40]!r}", file=path, where=at("qmethod", None),
                          fix="use layer or channel")
    scale = _nums_of(scale_v, "scale", name, at("scale", None), path)
    for k, s in enumerate(scale):
        if s <= 0:
            raise FormatError(f"{name}: scale must be > 0, got {s}", file=path, where=at("scale", k),
                              fix="restore the toolkit's value (or edit min/max instead)")
        if not FLOAT32_TINY <= s <= FLOAT32_MAX:
            raise FormatError(f"{name}: scale {s} is outside the normal float32 range (1.2e-38 to 3.4e38)",
                              file=path, where=at("scale", k), fix="restore the toolkit's value (or edit min/max)")
    zp = _nums_of(zp_v, "zero_point", name, at("zero_point", None), path)
    if any(z != int(z) for z in zp):
        raise FormatError(f"{name}: zero_point must be integers", file=path, where=at("zero_point", None),
                          fix="restore the toolkit's value")
    lo, hi = DTYPES.get(dtype, INT32)
    for k, z in enumerate(zp):
        if not lo <= z <= hi:
            raise FormatError(f"{name}: zero_point {int(z)} is outside the {dtype} range {lo}..{hi}", file=path,
                              where=at("zero_point", k), fix="restore the toolkit's value")
    if dtype in DTYPES:
        if not scale:
            raise FormatError(f"{name}: {dtype} tensor without scale", file=path, where=at("scale", None),
                              fix="restore the toolkit's scale list")
        if len(zp) not in (0, 1, len(scale)):
            raise FormatError(f"{name}: {len(zp)} zero points for {len(scale)} scales", file=path,
                              where=at("zero_point", None), fix="give one zero point per scale")
    mn = _nums_of(min_v, "min", name, entry, path)
    mx = _nums_of(max_v, "max", name, entry, path)
    return TensorParams(name, dtype, qmethod, scale, [int(z) for z in zp], mn, mx, line)


def scalar(node: yaml.ScalarNode) -> object:
    """A scalar with YAML 1.1 core typing (what safe_load would give; timestamps stay strings)."""
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


def tensor_of_nodes(kn: yaml.Node, vn: yaml.Node, path: str | None) -> TensorParams:
    """One entry from its composed key and value nodes."""
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
                out.append(scalar(item))
            return out
        if isinstance(node, yaml.ScalarNode):
            return scalar(node)
        raise FormatError(f"{name}: {key} must be a value or a list", file=path, where=line_of(node),
                          fix="restore the values the toolkit wrote")

    def at(key: str, k: int | None) -> str:
        node = fields.get(key)
        if node is None:
            return where
        if k is not None and isinstance(node, yaml.SequenceNode) and k < len(node.value):
            return line_of(node.value[k])
        return line_of(node)

    values = [val(k) for k in ("dtype", "qmethod", "scale", "zero_point", "min", "max")]
    return _make(name, kn.start_mark.line + 1, path, at, *values)


# ------------------------------------------------------------------ the layout hybrid_quantization_step1 writes
_KEY = r"(?:[A-Za-z0-9_./$(<=~;+]|-(?=\S))(?:[A-Za-z0-9_./$()\[\]{}<>=~;,@+\-]|:(?=\S))*"
_VAL = r"(?:[.0-9A-Za-z_+][-+.0-9A-Za-z_]*|-[-+.0-9A-Za-z_]+)"
_NUM = r"[-+]?(?:0|[1-9][0-9]*)(?:\.[0-9]*(?:[eE][-+][0-9]+)?)?"  # YAML 1.1 int / float, typed the same by float()
_ITEMS = r"(?:        -[ ]+" + _NUM + r"[ ]*\r?\n)*"
_LIST = r"(?:[ ]+\[\][ ]*\r?\n|[ ]*\r?\n(" + _ITEMS + "))"
_WORD = r"[ ]+([a-z][a-z0-9]*)[ ]*\r?\n"
# the toolkit's own field order (tier 1: one match per entry), then any order of simple fields (tier 2)
_FAST_ORDERED = re.compile(
    r"    (" + _KEY + r"):[ ]*\r?\n        qtype:" + _WORD + "        qmethod:" + _WORD + "        dtype:" + _WORD
    + "        min:" + _LIST + "        max:" + _LIST + "        scale:" + _LIST + "        zero_point:" + _LIST
    + "        ori_min:" + _LIST + "        ori_max:" + _LIST)
_FAST_ENTRY = re.compile(r"    (" + _KEY + r"):[ ]*\r?\n")
_FAST_FIELD = re.compile(r"        ([A-Za-z_][A-Za-z0-9_]*):(?:[ ]+(" + _VAL + r"|\[\])[ ]*\r?\n"
                         r"|[ ]*\r?\n((?:        -[ ]+" + _VAL + r"[ ]*\r?\n)*))")
_NUM_ITEMS = re.compile(_ITEMS)
_NUM_ONE = re.compile(_NUM)
_NUMERIC_FIELDS = ("scale", "zero_point", "min", "max")
_WORDS = KNOWN_DTYPES | set(QMETHODS)  # plain words that YAML types as strings


def _fast_nums(inline: str | None, items: str) -> list[float] | None:
    """A numeric field's values as PyYAML types them, or None when the field needs the exact reader."""
    if inline is not None:
        if items:
            return None
        if inline == "[]":
            return []
        return [float(inline)] if _NUM_ONE.fullmatch(inline) else None
    if not items:
        return []
    if not _NUM_ITEMS.fullmatch(items):
        return None
    return list(map(float, items.split()[1::2]))


def _no_where(key: str, k: int | None) -> str:
    return ""


def _as_list(v: object, what: str, name: str, where: str, path: str | None) -> list[float]:
    return v if isinstance(v, list) else []


def _finite(*lists: list[float] | None) -> bool:
    return all(x is not None and (not x or -math.inf < min(x) <= max(x) < math.inf) for x in lists)


def fast_entry(text: str, start: int, end: int, line: int) -> tuple[TensorParams | None, int]:
    """(entry, where it ends) for the entry at `start` in the toolkit's layout with valid values, else
    (None, start): the exact reader then reads it and gives any message."""
    m = _FAST_ORDERED.match(text, start, end)
    if m is not None:
        name, _, qmethod, dtype, mn, mx, sc, zp = m.groups()[:8]
        nums = [list(map(float, x.split()[1::2])) if x else [] for x in (sc, zp, mn, mx)]
        if len(name) > 1000 or dtype not in KNOWN_DTYPES or qmethod not in QMETHODS or not _finite(*nums):
            return None, start
        return _checked(name, line, dtype, qmethod, nums), m.end()
    m = _FAST_ENTRY.match(text, start, end)
    if m is None or len(m.group(1)) > 1000:
        return None, start
    fields: dict[str, tuple[str | None, str]] = {}
    pos = m.end()
    while (fm := _FAST_FIELD.match(text, pos, end)) is not None:
        if fm.group(1) in fields:
            return None, start  # a repeated field: the exact reader keeps the last one
        fields[fm.group(1)] = (fm.group(2), fm.group(3) or "")
        pos = fm.end()
    words: list[str | None] = []
    for key in ("dtype", "qmethod"):
        inline, items = fields.get(key, (None, ""))
        if items or (inline is not None and inline not in _WORDS):
            return None, start
        words.append(inline)
    lists = [_fast_nums(*fields[key]) if key in fields else [] for key in _NUMERIC_FIELDS]
    if not _finite(*lists):
        return None, start
    return _checked(m.group(1), line, words[0], words[1], lists), pos  # type: ignore[arg-type]


def _checked(name: str, line: int, dtype: str | None, qmethod: str | None,
             nums: list[list[float]]) -> TensorParams | None:
    try:
        return _make(name, line, None, _no_where, dtype, qmethod, *nums, nums=_as_list)
    except FormatError:
        return None  # the exact reader gives the message and its line


# ------------------------------------------------------------------ the whole file
_PARAMS_HEAD = re.compile(r"quantize_parameters[ ]*:(?:[ ]+#[^\r\n]*)?[ ]*\r?\n")


def read_cfg(text: str, path: str | None, reuse: CfgData | None = None, reuse_text: str = "",
             exact: bool = False) -> CfgData:
    """Read a cfg file piece by piece (composed whole when it cannot be cut, or with `exact`).

    `reuse` (the data of an earlier reading of `reuse_text`) is for checking an edit of that text: a
    `quantize_parameters` section of identical text is not read again, and its entries keep their earlier
    line numbers."""
    check_printable(text, path)
    sections = None if exact else split_sections(text)
    if sections is not None:
        try:
            return _read_pieces(text, path, sections, reuse, reuse_text)
        except NeedsWholeText as exc:
            refuse_if_too_big(len(text), exc.line, path)
    node = compose(text, path)
    if not isinstance(node, yaml.MappingNode):
        raise FormatError("top level is not a YAML mapping", file=path,
                          where=line_of(node) if node is not None else "line 1", fix=FIX_FILE)
    items = mapping_items(node)
    secs = [Section(str(k.value), k.start_mark.index, items[i + 1][0].start_mark.index if i + 1 < len(items)
                    else len(text), k.start_mark.line + 1, k, v) for i, (k, v) in enumerate(items)]
    return _finish(text, path, secs, None, 4)


def _read_pieces(text: str, path: str | None, sections: list[Section], reuse: CfgData | None,
                 reuse_text: str) -> CfgData:
    _unique(sections, path)
    params: dict[str, TensorParams] | None = None
    indent = 4
    for sec in sections:
        head = _PARAMS_HEAD.match(text, sec.start, sec.end) if sec.key == PARAMS_KEY else None
        if head is None:
            node = compose(text, path, sec.start, sec.end, sec.line - 1)
            items = mapping_items(node)
            if len(items) != 1 or str(items[0][0].value) != sec.key:
                raise NeedsWholeText(sec.line)
            sec.key_node, sec.value_node = items[0]
            continue
        old = reuse.sections.get(PARAMS_KEY) if reuse is not None else None
        if reuse is not None and old is not None and same_text(text, sec, reuse_text, old):
            params, indent = reuse.params, reuse.indent
            continue
        params, indent = _read_entries(text, path, head.end(), sec.end, sec.line + 1)
    return _finish(text, path, sections, params, indent)


def _read_entries(text: str, path: str | None, start: int, end: int,
                  line: int) -> tuple[dict[str, TensorParams] | None, int]:
    """The tensor entries of the `quantize_parameters` block in `text[start:end]` (None when it is empty) and
    their indent. Entries in the toolkit's layout are read by `fast_entry`, others composed one by one."""
    pos = skip_blank_lines(text, start, end)
    if pos >= end:
        return None, 4
    line += text.count("\n", start, pos)
    indent = indent_at(text, pos)
    params: dict[str, TensorParams] = {}
    while pos < end:
        if indent_at(text, pos) != indent:
            raise NeedsWholeText(line)
        tp, stop = fast_entry(text, pos, end, line) if indent == 4 else (None, pos)
        if tp is not None:
            nxt = skip_blank_lines(text, stop, end)
            if nxt < end and indent_at(text, nxt) > indent:
                tp = None  # the entry goes on after a blank or comment line
        if tp is None:
            stop = entry_end(text, pos, end, indent)
            items = mapping_items(compose(text, path, pos, stop, line - 1))
            if len(items) != 1:
                raise NeedsWholeText(line)
            tp = tensor_of_nodes(*items[0], path)
            nxt = stop
        params[tp.name] = tp
        line += text.count("\n", pos, nxt)
        pos = nxt
    return params, indent


def _finish(text: str, path: str | None, sections: list[Section], params: dict[str, TensorParams] | None,
            indent: int) -> CfgData:
    by_key = _unique(sections, path)
    ps = by_key.get(PARAMS_KEY)
    if ps is None:
        raise FormatError(f"missing `{PARAMS_KEY}`", file=path, where="line 1", fix=FIX_FILE)
    if ps.value_node is not None:
        if not isinstance(ps.value_node, yaml.MappingNode):
            raise FormatError(f"`{PARAMS_KEY}` is not a mapping of tensor names", file=path,
                              where=f"line {ps.line}", fix="restore the section the toolkit wrote")
        params = {}
        for kn, vn in mapping_items(ps.value_node):
            tp = tensor_of_nodes(kn, vn, path)
            params[tp.name] = tp
        indent = child_indent(ps.value_node, text)
    elif params is None:
        raise FormatError(f"`{PARAMS_KEY}` is not a mapping of tensor names", file=path,
                          where=f"line {ps.line}", fix="restore the section the toolkit wrote")
    custom: dict[str, str] = {}
    cs = by_key.get(CUSTOM_KEY)
    if cs is not None:
        cv = cs.value_node
        if not (isinstance(cv, yaml.MappingNode) or (isinstance(cv, yaml.ScalarNode) and cv.tag.endswith(":null"))):
            raise FormatError(f"`{CUSTOM_KEY}` must be a mapping (`{{}}` when empty)", file=path,
                              where=f"line {cs.line}", fix=f"write `{CUSTOM_KEY}: {{}}`")
        for kn, vn in mapping_items(cv):
            name, val = str(kn.value), str(vn.value)
            if not isinstance(vn, yaml.ScalarNode) or val not in CUSTOM_DTYPES:
                raise FormatError(f"unknown dtype {val[:40]!r} for '{name}' in {CUSTOM_KEY}", file=path,
                                  where=line_of(vn), fix="use int16 or float16")
            if name not in params:
                raise FormatError(f"Invalid operands name '{name}' in {CUSTOM_KEY}!", file=path,
                                  where=line_of(kn), fix="keys must be tensor names listed under "
                                  f"{PARAMS_KEY}{suggest(name, params)}")
            custom[name] = val
    return CfgData(by_key, params, custom, indent)


def _unique(sections: list[Section], path: str | None) -> dict[str, Section]:
    """The sections by key; FormatError for a key given twice (YAML would silently keep the last)."""
    by_key: dict[str, Section] = {}
    for sec in sections:
        if sec.key in by_key:
            raise FormatError(f"`{sec.key}` is given twice (first on line {by_key[sec.key].line})", file=path,
                              where=f"line {sec.line}", fix="keep one of them")
        by_key[sec.key] = sec
    return by_key


def suggest(name: str, keys: object) -> str:
    """'; did you mean a, b' for close matches among `keys` ('' when none)."""
    import difflib

    close = difflib.get_close_matches(name, list(keys), n=3, cutoff=0.5)  # type: ignore[call-overload]
    return ("; did you mean " + ", ".join(close)) if close else ""


def same_text(text: str, sec: Section, old_text: str, old: Section, chunk: int = 1 << 20) -> bool:
    """True when two sections have identical text (compared a megabyte at a time: no full copies)."""
    n = sec.end - sec.start
    if n != old.end - old.start:
        return False
    return all(text[sec.start + k:sec.start + min(k + chunk, n)] == old_text[old.start + k:old.start + min(k + chunk, n)]
               for k in range(0, n, chunk))



