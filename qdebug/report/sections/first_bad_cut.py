"""The First bad cut section (bisect): where along the graph the damage starts."""

from __future__ import annotations

from qdebug.report.blocks import Block, Heading, Para, Table, b, bad, c, good, il
from qdebug.report.context import Ctx, cut_op
from qdebug.report.format import f_bound, f_metric


def first_bad_cut(ctx: Ctx) -> list[Block]:
    """The first tensor whose cumulative error fails the cut threshold, and the probes that found it."""
    if ctx.kind != "bisect":
        return []
    cut = ctx.bis.first_bad_cut
    out: list[Block] = [Heading(2, "First bad cut")]
    thr = f"{cut.metric} {f_bound(cut_op(ctx.bis), cut.bound)}"
    how = ("read from the one-pass comparison" if cut.path == "one-pass"
           else f"binary search over truncated graphs, {cut.evaluations} backend runs")
    if cut.tensor:
        ref = cut.tensor + (f".{cut.part}" if cut.part else "")
        out.append(Para(il("The first tensor in topological order whose cumulative error fails ", c(thr), " is ",
                           b(ref), " produced by ", c(cut.node or "?"), f" ({cut.op_type}, #{cut.index}): "
                           f"{cut.metric} = {f_metric(cut.metric, cut.value)} ({how}). Everything before "
                           "it is within the threshold, so the damage starts here.")))
    else:
        out.append(Para(il("No tensor fails ", c(thr), f" ({how}): the error builds up gradually rather than "
                           "breaking at one op.")))
    probes = cut.probes
    if probes:
        rows = [[il(str(p["index"])), il(c(p["tensor"])), il(f_metric(cut.metric, p["value"])),
                 il(p.get("part") or "–"), il(bad("fails") if p["fails"] else good("passes"))] for p in probes]
        out.append(Table(["cut #", "tensor", cut.metric, "part", "result"], rows, "rlrll"))
    return out
