"""What every report section reads: `Ctx` (the document, the pictures and notes drawn for it) and
small lookups into the document shared by several sections and by the plots."""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field

from qdebug.report.blocks import Inline, c, il
from qdebug.report.format import f_jump

DETECTION_GROUP = "detection"  # ctx.images group of the float-vs-quantized pictures
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


@dataclass
class Ctx:
    """The document plus what the plots step adds to it: pictures (by group) and notes."""

    doc: dict
    images: list[tuple[str, str, str, str]] = field(default_factory=list)  # (group, file, alt, caption)
    notes: list[str | Inline] = field(default_factory=list)
    det_notes: list[str | Inline] = field(default_factory=list)  # about the detection pictures
    top: int = 15

    @property
    def kind(self) -> str:
        """"bisect" or "compare", from the schema name."""
        return "bisect" if self.doc["schema"].startswith("qdebug.bisect") else "compare"

    @property
    def before(self) -> dict:
        """The compare result as quantized (a bisect carries it as `compare_before`)."""
        return self.doc["compare_before"] if self.kind == "bisect" else self.doc

    @property
    def after(self) -> dict | None:
        """The compare result with the promotion set applied (bisect only; None otherwise)."""
        return self.doc.get("compare_after") if self.kind == "bisect" else None


def rows_by_tensor(cmp: dict | None) -> dict[str, dict]:
    """tensor name -> its row of `tensors` ({} without a result)."""
    return {t["tensor"]: t for t in cmp["tensors"]} if cmp else {}


def output_refs(cmp: dict) -> list[tuple[str, dict]]:
    """(ref, cumulative metrics) of every graph output and output part, e.g. ('output0.score', {...})."""
    out = []
    for o in cmp["outputs"]:
        out.append((o["tensor"], o["cumulative"]))
        for p in o["parts"]:
            out.append((f"{p['tensor']}.{p['part']}", p["cumulative"]))
    return out


def default_failures(cmp: dict) -> list[tuple[str, dict]]:
    """Outputs/parts failing the bisect default target (cosine ≥ 0.999 on every part, else the output)."""
    fails = []
    for o in cmp["outputs"]:
        checks = [(f"{p['tensor']}.{p['part']}", p["cumulative"]) for p in o["parts"]] or \
                 [(o["tensor"], o["cumulative"])]
        for ref, m in checks:
            if m["cosine"] is None or m["cosine"] < 0.999:
                fails.append((ref, m))
    return fails


def op_index(cmp: dict, key: str) -> int | None:
    """Topological index of an op (QuantOp key or node name)."""
    for t in cmp["tensors"]:
        if t.get("group") == key or t["node"] == key:
            return int(t["index"])
    return None


def _groups_of(cmp: dict) -> dict[str, str]:
    """node name -> QuantOp key."""
    out = {}
    for g in cmp["quant"].get("groups", []):
        for n in g.get("nodes", []) or [g["key"]]:
            out[n] = g["key"]
    return out


def sensitive_ops(ctx: Ctx, n: int = 5) -> list[tuple[str, str, str]]:
    """(op key, op type, reason) of the most sensitive ops: bisect ranking, else hazards then jumps."""
    if ctx.kind == "bisect":
        out = []
        for r in ctx.doc["ranking"][:n]:
            e = r["evidence"]
            why = ", ".join(e["hazards"]) if e["hazards"] else f"jump {f_jump(e['jump_db'])} dB"
            out.append((r["op"], r["op_type"], why))
        return out
    cmp = ctx.before
    groups = _groups_of(cmp)
    gtype = {g["key"]: g["op_type"] for g in cmp["quant"].get("groups", [])}
    hazards: dict[str, list[str]] = {}
    for h in cmp["hazards"]:
        hazards.setdefault(groups.get(h["node"], h["node"]), []).append(h["kind"])
    # the bisect ranking formula over quantized op outputs: hazard bonus + jump + isolated error
    ops: dict[str, dict] = {}
    for t in cmp["tensors"]:
        if t["index"] < 0 or not t.get("quantized"):
            continue
        key = t.get("group") or t["node"]
        o = ops.setdefault(key, {"type": gtype.get(key, t["op_type"]), "jump": 0.0, "iso": None})
        if t["jump_db"] is not None:
            o["jump"] = max(o["jump"], t["jump_db"])
        iso = t["isolated"]["snr_db"]
        if iso is not None:
            o["iso"] = iso if o["iso"] is None else min(o["iso"], iso)
    for key in hazards:
        if key not in ops:
            row = next((t for t in cmp["tensors"] if t.get("group") == key or t["node"] == key), None)
            ops[key] = {"type": gtype.get(key, row["op_type"] if row else "?"), "jump": 0.0, "iso": None}
    for o in ops.values():
        iso = o["iso"] if o["iso"] is not None else 40.0
        o["score"] = max(0.0, o["jump"]) + 0.5 * max(0.0, 40.0 - iso)
    order = sorted(ops, key=lambda k: (not hazards.get(k), -ops[k]["score"], k))
    seen: dict[str, tuple[str, str, str]] = {}
    for key in order:
        o = ops[key]
        if not hazards.get(key) and o["score"] <= 0:
            break
        why = ", ".join(hazards[key]) if hazards.get(key) else f"jump {f_jump(o['jump'])} dB"
        seen[key] = (key, o["type"], why)
    return list(seen.values())[:n]


def why_ops(ctx: Ctx, n: int = 3) -> list[tuple[str, str]]:
    """(op key, reason) for the why-plots: the promotion set first, then the most sensitive ops."""
    chosen: list[tuple[str, str]] = []
    if ctx.kind == "bisect":
        rank = {r["op"]: r for r in ctx.doc["ranking"]}
        for k in ctx.doc["result"]["set"]:
            r = rank.get(k)
            hz = ", ".join(r["evidence"]["hazards"]) if r and r["evidence"]["hazards"] else ""
            chosen.append((k, f"promoted; {hz}" if hz else "promoted"))
    for key, _typ, why in sensitive_ops(ctx, 10):
        if len(chosen) >= n:
            break
        if key not in {k for k, _ in chosen}:
            chosen.append((key, why))
    return chosen[:n]


def cut_op(doc: dict) -> str:
    """The comparison of the first-bad-cut threshold (`>=` unless the target's cut_threshold says otherwise)."""
    m = re.match(r"^\s*\w+\s*(>=|<=|>|<)", (doc.get("target") or {}).get("cut_threshold") or "")
    return m.group(1) if m else ">="


def clause_key(cl: dict) -> str:
    """The key of a clause's value in `result.before/after` and `evaluations[].values` (Clause.text())."""
    head = f"{cl['ref']}:" if cl.get("tensor") or cl.get("ref") != "task" else ""
    return f"{head}{cl['metric']}{cl['op']}{cl['bound']:g}"


def clause_ref(cl: dict) -> Inline:
    """How a clause's subject reads in prose: the tensor/part in code, or "detections" for task metrics."""
    return il("detections") if not cl.get("tensor") and cl.get("ref") == "task" else il(c(cl["ref"]))


def meets(v: float | None, op: str, bound: float) -> bool:
    """Whether a value satisfies `op bound` (a clause's comparison as the document spells it: >=, >, <=, <)."""
    return v is not None and bool(_OPS[op](v, bound))


def passes(cl: dict, v: float | None) -> bool:
    """Whether a target clause of the document holds for value `v` (None never passes)."""
    return meets(v, cl["op"], cl["bound"])


def reproduce(doc: dict) -> str:
    """The command line that produced the document ("" when unknown)."""
    return (doc.get("command") or "").strip()


def vendor_refs(vendor: dict) -> list[tuple[str, dict, dict | None]]:
    """(ref, vendor metrics, built-in metrics) for every output and part of a vendor comparison."""
    out = []
    for o in vendor.get("outputs", []):
        out.append((o["tensor"], o["cumulative"], o.get("builtin")))
        for p in o.get("parts", []):
            out.append((f"{o['tensor']}.{p['part']}", p["cumulative"], p.get("builtin")))
    return out


def detection_section(doc: dict) -> dict | None:
    """The `detection` section of a compare/bisect result (None when absent or not a usable object)."""
    det = doc.get("detection")
    return det if isinstance(det, dict) and isinstance(det.get("quantized"), dict) else None
