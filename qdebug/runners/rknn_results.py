"""Readers for rknn-toolkit2 accuracy_analysis output: error_analysis.txt, map_name_to_file.txt, dumps.

Tensor names in these files carry toolkit suffixes (`-rs`, `_rs`, `_int8`, `__int16`, `_pad`); `onnx_name`
maps them back to ONNX tensor names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdebug.errors import FormatError

ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ROW = re.compile(r"^(?:\[(?P<op>[^\]]+)\]\s+)?(?P<name>\S+)(?P<rest>.*)$")
# 2.x layout: "cos | euc   cos | euc"; euc is printed with at most 5 decimals and may run into the next column
_V2 = re.compile(r"^\s*(?P<ec>-?\d+\.\d+)\s*\|\s*(?P<ee>-?\d+(?:\.\d{1,5})?)\s*"
                 r"(?:(?P<sc>-?\d+\.\d+)\s*\|\s*(?P<se>-?\d+(?:\.\d{1,5})?))?")
_V1 = re.compile(r"^\s*(?P<ec>-?\d+\.\d+)\s+(?P<sc>-?\d+\.\d+)(?:\s+(?P<rs>-?\d+\.\d+)\s+(?P<rg>-?\d+\.\d+))?")
_SUFFIXES = ("__int16", "__int8", "__float16", "_int8", "_int16", "-rs", "_rs", "_pad")


@dataclass
class AnalysisRow:
    """One tensor row of error_analysis.txt (None where the toolkit left the row blank: fused op)."""

    op_type: str | None
    name: str
    entire_cos: float | None
    entire_euc: float | None
    single_cos: float | None
    single_euc: float | None
    line: int

    def to_json(self) -> dict:
        return {"op_type": self.op_type, "name": self.name, "entire_cos": self.entire_cos,
                "entire_euc": self.entire_euc, "single_cos": self.single_cos, "single_euc": self.single_euc}


def onnx_name(name: str) -> str:
    """Strip the toolkit's suffixes from a tensor name (`/x/Mul_output_0-rs` -> `/x/Mul_output_0`)."""
    changed = True
    while changed:
        changed = False
        for s in _SUFFIXES:
            if name.endswith(s) and len(name) > len(s):
                name = name[: -len(s)]
                changed = True
    return name


def parse_error_analysis(text: str, path: str | None = None) -> list[AnalysisRow]:
    """Parse both the 2.x (entire/single cos|euc) and the older (entire/per_layer/runtime) layouts."""
    lines = text.splitlines()
    try:
        sep = next(i for i, ln in enumerate(lines) if ln.startswith("-----"))
    except StopIteration:
        raise FormatError("no '-----' header separator: not an accuracy_analysis error table", file=path,
                          where="line 1", fix="give the error_analysis.txt written by rknn.accuracy_analysis") from None
    header = "\n".join(lines[:sep])
    v2 = "single" in header and "euc" in header
    # the value columns start where the first metric header starts (fixed position from the header)
    hdr = [ln for ln in lines[:sep] if "entire" in ln]
    col = hdr[-1].index("entire") - 10 if hdr else 40
    rows: list[AnalysisRow] = []
    for k, ln in enumerate(lines[sep + 1:], start=sep + 2):
        if not ln.strip():
            continue
        m = _ROW.match(ln.rstrip())
        if not m:
            continue
        name, rest = m.group("name"), m.group("rest")
        if len(ln) > col and ln[:col].strip() and not ln[col - 1].isspace() and rest and not rest[0].isspace():
            rest = " " + rest
        vals = (_V2 if v2 else _V1).match(rest)
        if not vals or not rest.strip():
            rows.append(AnalysisRow(m.group("op"), name, None, None, None, None, k))
            continue
        g = vals.groupdict()

        def f(key: str, g: dict = g) -> float | None:
            v = g.get(key)
            return float(v) if v is not None else None

        rows.append(AnalysisRow(m.group("op"), name, f("ec"), f("ee") if v2 else None, f("sc"),
                                f("se") if v2 else None, k))
    if not rows:
        raise FormatError("no rows under the header", file=path, where=f"line {sep + 2}",
                          fix="the analysis may have failed; see the toolkit log")
    return rows


def parse_name_map(text: str) -> dict[str, str]:
    """map_name_to_file.txt: tensor name -> dump file name."""
    out: dict[str, str] = {}
    for ln in text.splitlines():
        parts = ln.split()
        if len(parts) >= 2 and not ln.startswith("-") and parts[0] != "layer_name":
            out[parts[0]] = parts[1]
    return out


def load_dump(path: str | Path) -> np.ndarray:
    """A tensor dump (whitespace-separated floats, flattened)."""
    return np.loadtxt(str(path), dtype=np.float32, ndmin=1)


def fused_away(graph_tensors: list[str], rows: list[AnalysisRow]) -> list[str]:
    """ONNX activation tensors with no row, or a blank row, in the table (fused into another op by the toolkit)."""
    seen = {onnx_name(r.name) for r in rows if r.entire_cos is not None or r.single_cos is not None}
    return [t for t in graph_tensors if t not in seen]


# ------------------------------------------------------- what the toolkit built (verbose build tables)
_LOG_PREFIX = re.compile(r"^(?:[DIWE]\s+RKNN:\s*\[[^\]]*\]\s?)")
BUILT_DTYPES = {"INT8": "int8", "UINT8": "int8", "INT16": "int16", "FLOAT16": "float16", "FLOAT": "float32",
                "FLOAT32": "float32"}


@dataclass
class BuildTables:
    """The dtypes the toolkit actually built, from its verbose layer and feature-tensor tables."""

    ops: dict[str, str]  # ONNX node name (FullName after `Type:`) -> dtype
    tensors: dict[str, str]  # tensor name as the toolkit lists it -> dtype (first listing wins)

    def names(self) -> list[str]:
        """Every op and tensor name the build knows (for 'closest names' hints)."""
        return [*self.tensors, *self.ops]


def parse_build_tables(text: str) -> BuildTables | None:
    """Read the 'Network Layer Information Table' and 'Feature Tensor Information Table' of a verbose build
    log (the toolkit prints them after compiling); None when the log has no layer table."""
    ops: dict[str, str] = {}
    tensors: dict[str, str] = {}
    section = None
    found = False
    for raw in text.splitlines():
        ln = _LOG_PREFIX.sub("", ANSI_RE.sub("", raw)).rstrip()
        if "Network Layer Information Table" in ln:
            section, found = "ops", True
            continue
        if "Feature Tensor Information Table" in ln:
            section = "tensors"
            continue
        if "Information Table" in ln:
            section = None
            continue
        parts = ln.split()
        if section is None or len(parts) < 4 or not parts[0].isdigit():
            continue
        if section == "ops" and parts[2] in BUILT_DTYPES and ":" in parts[-1]:
            ops.setdefault(parts[-1].split(":", 1)[1], BUILT_DTYPES[parts[2]])
        elif section == "tensors" and parts[3] in BUILT_DTYPES:
            tensors.setdefault(parts[2], BUILT_DTYPES[parts[3]])
    return BuildTables(ops, tensors) if found else None


def built_dtype(key: str, tables: BuildTables, producer: dict[str, str]) -> str | None:
    """The dtype the build gave a cfg tensor key: its own feature-tensor row (also under the plain ONNX name),
    else the op that computes it (a conv output fused into ConvExSwish has no row of its own); None if absent.
    `producer` maps ONNX tensor -> producing node name."""
    for name in (key, onnx_name(key)):
        if name in tables.tensors:
            return tables.tensors[name]
    node = producer.get(onnx_name(key))
    if node is not None and node in tables.ops:
        return tables.ops[node]
    return None


def unapplied_promotions(requested: dict[str, str], tables: BuildTables,
                         producer: dict[str, str]) -> dict[str, str]:
    """Every requested cfg key not built at the requested dtype -> one line saying what was built instead
    (or that the build has no such tensor) with the closest names the toolkit knows."""
    import difflib

    out: dict[str, str] = {}
    for key, want in requested.items():
        got = built_dtype(key, tables, producer)
        if got == want:
            continue
        if got is not None:
            out[key] = f"requested {want}, the toolkit built {got}"
        else:
            close = difflib.get_close_matches(key, tables.names(), n=3, cutoff=0.6)
            out[key] = (f"requested {want}, no tensor or op of that name in the build"
                        + (f"; closest: {', '.join(close)}" if close else ""))
    return out
