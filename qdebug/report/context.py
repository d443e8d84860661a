"""What every report section reads: `Ctx` (the document, the pictures and notes drawn for it) and
small lookups into the document shared by several sections and by the plots."""

from __future__ import annotations

import operator
import re
from dataclasses import InitVar, dataclass, field

from qdebug.report.blocks import Inline, c, il
from qdebug.report.format import f_jump
from qdebug.results.bisect import BISECT_SCHEMA, BisectResult, ClauseInfo
from qdebug.results.compare import CompareResult
from qdebug.results.detection import DetectionResult, DetectionRun
from qdebug.results.values import Metrics
from qdebug.results.vendor import VendorComparison

DETECTION_GROUP = "detection"  # ctx.images group of the float-vs-quantized pictures
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


@dataclass
class Ctx:
    """The typed result plus what the plots step adds to it: pictures (by group) and notes.

    Build it from the typed record (`Ctx(res=...)`) or, for convenience, from a validated document
    (`Ctx(doc=...)`, turned into the record once).
    """

    res: CompareResult | BisectResult = None  # type: ignore[assignment]
    images: list[tuple[str, str, str, str]] = field(default_factory=list)  # (group, file, alt, caption)
    notes: list[str | Inline] = field(default_factory=list)
    det_notes: list[str | Inline] = field(default_factory=list)  # about the detection pictures
    top: int = 15
    doc: InitVar[dict | None] = None

    def __post_init__(self, doc: dict | None) -> None:
        if self.res is None:
            if doc is None:
                raise TypeError("Ctx needs a typed result (res=) or a document (doc=)")
            self.res = typed_result(doc)

    @property
    def bis(self) -> BisectResult:
        """The typed bisect result (only valid when kind == "bisect")."""
        if not isinstance(self.res, BisectResult):
            raise TypeError("not a bisect result")
        return self.res

    @property
    def cmp(self) -> CompareResult:
        """The typed compare result as quantized (a bisect carries it as `compare_before`)."""
        return self.res.compare_before if isinstance(self.res, BisectResult) else self.res  # type: ignore[return-value]

    @property
    def cmp_after(self) -> CompareResult | None:
        """The typed compare result with the promotion set applied (bisect only; None otherwise)."""
        return self.res.compare_after if isinstance(self.res, BisectResult) else None

    @property
    def kind(self) -> str:
        """"bisect" or "compare", from the type of the result."""
        return "bisect" if isinstance(self.res, BisectResult) else "compare"


def typed_result(doc: dict) -> CompareResult | BisectResult:
    """The typed record of a validated compare or bisect document (by its schema)."""
    if str(doc.get("schema", "")).startswith(BISECT_SCHEMA.split("/")[0]):
        return BisectResult.from_json(doc)
    return CompareResult.from_json(doc)


def output_metrics(cmp: CompareResult) -> list[tuple[str, Metrics]]:
    """(ref, cumulative metrics) of every graph output and output part of a typed result."""
    out: list[tuple[str, Metrics]] = []
    for o in cmp.outputs:
        out.append((o.tensor, o.cumulative))
        for p in o.parts:
            out.append((f"{p.tensor}.{p.part}", p.cumulative or Metrics(None, None, None, None)))
    return out


def default_failures(cmp: CompareResult) -> list[tuple[str, Metrics]]:
    """Outputs/parts failing the bisect default target (cosine ≥ 0.999 on every part, else the output)."""
    fails: list[tuple[str, Metrics]] = []
    for o in cmp.outputs:
        checks = [(f"{p.tensor}.{p.part}", p.cumulative or Metrics(None, None, None, None)) for p in o.parts] \
            or [(o.tensor, o.cumulative)]
        fails += [(ref, m) for ref, m in checks if m.cosine is None or m.cosine < 0.999]
    return fails


def op_index(cmp: CompareResult, key: str) -> int | None:
    """Topological index of an op (QuantOp key or node name)."""
    for t in cmp.tensors:
        if t.group == key or t.node == key:
            return int(t.index)
    return None


def sensitive_ops(ctx: Ctx, n: int = 5) -> list[tuple[str, str, str]]:
    """(op key, op type, reason) of the most sensitive ops: bisect ranking, else hazards then jumps."""
    if ctx.kind == "bisect":
        out = []
        for r in ctx.bis.ranking[:n]:
            e = r.evidence
            why = ", ".join(e.hazards) if e.hazards else f"jump {f_jump(e.jump_db)} dB"
            out.append((r.op, r.op_type, why))
        return out
    cmp = ctx.cmp
    groups = cmp.quant.group_of()
    gtype = {g.key: g.op_type for g in cmp.quant.groups}
    hazards: dict[str, list[str]] = {}
    for h in cmp.hazards:
        hazards.setdefault(groups.get(h.node, h.node), []).append(h.kind)
    # the bisect ranking formula over quantized op outputs: hazard bonus + jump + isolated error
    ops: dict[str, dict] = {}
    for t in cmp.tensors:
        if t.index < 0 or not t.quantized:
            continue
        key = t.group or t.node
        o = ops.setdefault(key, {"type": gtype.get(key, t.op_type), "jump": 0.0, "iso": None})
        if t.jump_db is not None:
            o["jump"] = max(o["jump"], t.jump_db)
        iso = t.isolated.snr_db
        if iso is not None:
            o["iso"] = iso if o["iso"] is None else min(o["iso"], iso)
    for key in hazards:
        if key not in ops:
            row = next((t for t in cmp.tensors if t.group == key or t.node == key), None)
            ops[key] = {"type": gtype.get(key, row.op_type if row else "?"), "jump": 0.0, "iso": None}
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
        rank = {r.op: r for r in ctx.bis.ranking}
        for k in ctx.bis.result.set:
            r = rank.get(k)
            hz = ", ".join(r.evidence.hazards) if r and r.evidence.hazards else ""
            chosen.append((k, f"promoted; {hz}" if hz else "promoted"))
    for key, _typ, why in sensitive_ops(ctx, 10):
        if len(chosen) >= n:
            break
        if key not in {k for k, _ in chosen}:
            chosen.append((key, why))
    return chosen[:n]


def cut_op(doc: BisectResult) -> str:
    """The comparison of the first-bad-cut threshold (`>=` unless the target's cut_threshold says otherwise)."""
    m = re.match(r"^\s*\w+\s*(>=|<=|>|<)", doc.target.cut_threshold or "")
    return m.group(1) if m else ">="


def clause_key(cl: ClauseInfo) -> str:
    """The key of a clause's value in `result.before/after` and `evaluations[].values` (Clause.text())."""
    head = f"{cl.ref}:" if cl.tensor or cl.ref != "task" else ""
    return f"{head}{cl.metric}{cl.op}{cl.bound:g}"


def clause_ref(cl: ClauseInfo) -> Inline:
    """How a clause's subject reads in prose: the tensor/part in code, or "detections" for task metrics."""
    return il("detections") if not cl.tensor and cl.ref == "task" else il(c(cl.ref))


def meets(v: float | None, op: str, bound: float) -> bool:
    """Whether a value satisfies `op bound` (a clause's comparison as the document spells it: >=, >, <=, <)."""
    return v is not None and bool(_OPS[op](v, bound))


def reproduce(doc: CompareResult | BisectResult) -> str:
    """The command line that produced the document ("" when unknown)."""
    return (doc.command or "").strip()


def vendor_refs(vendor: VendorComparison) -> list[tuple[str, dict, dict | None]]:
    """(ref, vendor metrics, built-in metrics) for every output and part of a vendor comparison."""
    out = []
    for o in vendor.outputs:
        out.append((o["tensor"], o["cumulative"], o.get("builtin")))
        for p in o.get("parts", []):
            out.append((f"{o['tensor']}.{p['part']}", p["cumulative"], p.get("builtin")))
    return out


def detection_section(res: CompareResult | BisectResult | None) -> DetectionResult | None:
    """The `detection` section of a compare/bisect result (None when absent or without a usable quantized run)."""
    det = res.detection if res is not None else None
    return det if isinstance(det, DetectionResult) and isinstance(det.quantized, DetectionRun) else None
