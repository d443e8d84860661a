"""The Warnings section: everything the run flagged that the reader should check."""

from __future__ import annotations

from qdebug.report.blocks import Block, Bullets, Heading, c, il, join
from qdebug.report.context import Ctx
from qdebug.results.vendor import CalibMapping


def run_warnings(ctx: Ctx) -> list[Block]:
    """Warnings of the run: comparison warnings, calibration-file mapping, unpromotable and unsupported ops."""
    cmp = ctx.cmp
    items = [il(w) for w in cmp.warnings]
    mapping = cmp.quant.calib_mapping or CalibMapping()
    for n in mapping.notes:
        items.append(il("calibration file: ", n))
    un = mapping.unmatched_records
    if un:
        items.append(il(f"calibration file: {len(un)} record(s) match no ONNX node, e.g. ",
                        join([il(c(x)) for x in un[:3]])))
    nr = mapping.nodes_without_record
    if nr:
        items.append(il(f"calibration file: {len(nr)} quantized op(s) have no record (calibrated by qdebug), e.g. ",
                        join([il(c(x)) for x in nr[:3]])))
    unp = (ctx.res.quant.judge or {}).get("unpromotable") or {}
    for k, why in unp.items():
        items.append(il("the toolkit cannot promote ", c(k), f" ({why})"))
    if cmp.quant.unsupported:
        items.append(il("ops the simulator ran in float: ", join([il(c(x)) for x in cmp.quant.unsupported[:10]])))
    if not items:
        return []
    return [Heading(2, "Warnings"), Bullets(items)]
