"""The Hazards section: graph patterns that int8 quantization is known to break."""

from __future__ import annotations

from qdebug.report.blocks import Block, Details, Heading, Para, Table, b, c, il
from qdebug.report.context import Ctx


def hazards(ctx: Ctx) -> list[Block]:
    """Graph hazards found by the comparison (what happens, the fix); a line saying there are none otherwise."""
    hz = ctx.cmp.hazards
    out: list[Block] = [Heading(2, "Hazards")]
    if not hz:
        out.append(Para(il("No graph hazards found (score/coordinate concats, mixed-range concats, large constant "
                           "scales).")))
        return out
    rows = [[il(b(h.kind)), il(c(h.node)), il(h.message), il(h.fix)] for h in hz]
    out.append(Table(["hazard", "op", "what happens", "fix"], rows[:15]))
    if len(rows) > 15:
        out.append(Details(f"All {len(rows)} hazards", [Table(["hazard", "op", "what happens", "fix"], rows)]))
    return out
